"""A folder of everything that goes wrong with real image folders, for the bad-input tests."""
from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

# Readable images in unusual encodings: every one must be trained on, none listed as bad.
ODD_GOOD = ("cmyk.jpg", "gray16.png", "palette.png", "rgba.png", "exif_rotated.jpg", "tiny_1x1.png",
            "huge_10000x10000.png", "ünïcødé 名前.png", "with space.png", "linked.png")
# Files that must be skipped and listed, each with a word its reason must contain.
BAD = {"empty.jpg": "empty", "truncated.jpg": "truncated", "fake.png": "not a decodable image",
       "notes.txt": "not an image file", "loop.jpg": "symbolic link loop",
       "dangling.jpg": "broken symbolic link"}
HIDDEN = (".DS_Store", "._img0.jpg", ".hidden.png")  # macOS litter and dotfiles: ignored, not listed
HUGE_SIDE = 10_000


def _random_rgb(path: Path, seed: int, size: int = 24) -> None:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _odd_good(folder: Path) -> None:
    rgb = np.random.default_rng(7).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    gray16 = (np.arange(20 * 20, dtype=np.uint16).reshape(20, 20) * 160).astype(np.uint16)
    Image.fromarray(gray16).save(folder / "gray16.png")  # Pillow writes a 16-bit grayscale PNG
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    palette.save(folder / "palette.png", transparency=0)
    Image.fromarray(np.dstack([rgb, np.full((20, 30), 128, np.uint8)])).save(folder / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise on display
    Image.fromarray(rgb).save(folder / "exif_rotated.jpg", exif=exif)
    Image.new("RGB", (1, 1), (255, 0, 0)).save(folder / "tiny_1x1.png")
    # One colour compresses to a few hundred KB, but decodes to 10000 x 10000 x 3 = 300 MB.
    Image.new("L", (HUGE_SIDE, HUGE_SIDE), 90).save(folder / "huge_10000x10000.png", optimize=False)
    _random_rgb(folder / "ünïcødé 名前.png", 8)
    _random_rgb(folder / "with space.png", 9)
    _random_rgb(folder.parent / "elsewhere.png", 13)  # outside every class folder
    os.symlink("../elsewhere.png", folder / "linked.png")  # a working link is followed
    os.symlink(".", folder / "again")  # a folder link back to its own folder: must not be walked forever


def write_bad_files(folder: Path) -> None:
    """Writes one file of each kind in BAD into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    _random_rgb(folder / "truncated.jpg", 10, size=64)
    data = (folder / "truncated.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "fake.png").write_text("this is not a PNG")
    (folder / "notes.txt").write_text("annotator notes")
    os.symlink("loop.jpg", folder / "loop.jpg")  # points at itself: ELOOP on open
    os.symlink("nowhere/missing.jpg", folder / "dangling.jpg")


def _hidden(folder: Path) -> None:
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "._img0.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    _random_rgb(folder / ".hidden.png", 11)
    (folder / ".thumbnails").mkdir()
    _random_rgb(folder / ".thumbnails" / "t.png", 12)


def _class_folder(folder: Path, seed: int, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        _random_rgb(folder / f"img{i}.png", seed * 100 + i)


def make_bad_corpus(root: Path) -> Path:
    """Writes a split-layout folder that trains despite every kind of bad input.

    Layout: train/{cat,dog}, val/{cat,dog}, test/{cat,dog}; train/cat also holds the ODD_GOOD
    images, the BAD files and the HIDDEN ones; val/dog holds the BAD files too. 4 + 10 cats and 5
    dogs in train: 19, no batch of one at batch size 8.
    """
    for split, counts in (("train", (4, 5)), ("val", (2, 2)), ("test", (2, 2))):
        for seed, (name, count) in enumerate(zip(("cat", "dog"), counts)):
            _class_folder(root / split / name, seed + 10 * len(split), count)
    _odd_good(root / "train" / "cat")
    write_bad_files(root / "train" / "cat")
    write_bad_files(root / "val" / "dog")
    _hidden(root / "train" / "cat")
    return root


def make_only_bad_class(root: Path) -> Path:
    """A flat folder whose class `broken` holds nothing but BAD files."""
    _class_folder(root / "ok", 1, 3)
    write_bad_files(root / "broken")
    return root


def make_val_class_missing_from_train(root: Path) -> Path:
    """A split folder whose val/ has a class `bird` that train/ lacks."""
    for split in ("train", "val"):
        for seed, name in enumerate(("cat", "dog")):
            _class_folder(root / split / name, seed, 3)
    _class_folder(root / "val" / "bird", 5, 2)
    return root


# ----- faults: races and kills ----------------------------------------------------------------------------------
class HeldClaim:
    """Another process holding finetune.locks.claim on `lock_path` until `release()` (or kill -9 with `kill()`)."""

    def __init__(self, lock_path: Path):
        import subprocess
        import sys

        code = ("import sys, time; from pathlib import Path; from finetune.locks import claim\n"
                "with claim(Path(sys.argv[1]), 'held'):\n"
                "    print('held', flush=True); sys.stdin.read()\n")
        self.process = subprocess.Popen([sys.executable, "-c", code, str(lock_path)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "held"

    def release(self) -> None:
        self.process.communicate("", timeout=30)

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no cleanup runs, the lock file stays behind
        self.process.wait(timeout=30)

    def __enter__(self) -> "HeldClaim":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.release()


# Temporary names a writer killed mid-write leaves in a run directory: this version's (.NAME.tmp-PID-HEX,
# .NAME.old-PID-HEX, for a process that no longer runs) and version 0.1's (tempfile.mkstemp beside a
# checkpoint; fixed names beside config.yaml and metrics.csv).
KILLED_WRITER_LEFTOVERS = {
    "checkpoints": (".last.ckpt.tmp-999999999-0badc0de", ".best.ckpt.tmp-999999999-00000001",
                    ".last.ckpt.k3y_9abc.tmp"),
    ".": (".config.yaml.tmp-999999999-deadbeef", ".config.yaml.tmp", ".metrics.csv.tmp",
          ".metrics.csv.tmp-999999999-cafef00d", ".model.tmp-999999999-12345678"),
}


def plant_killed_writer_leftovers(run_dir: Path) -> list[Path]:
    """Writes KILLED_WRITER_LEFTOVERS into `run_dir` (the staged bundle as a folder) and returns their paths."""
    planted = []
    for folder, names in KILLED_WRITER_LEFTOVERS.items():
        for name in names:
            path = (run_dir / folder / name).resolve()
            if name.startswith(".model."):
                path.mkdir(parents=True)
                (path / "model.safetensors").write_bytes(b"\0" * 1024)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"\0" * 1024)
            planted.append(path)
    return planted


# ----- names that are not UTF-8 ------------------------------------------------------------------
# 0xFF and 0xFE occur in no UTF-8 sequence: Python gets such a name as the surrogates "\udcff\udcfe".
NOT_UTF8 = b"\xff\xfe"


def not_utf8(stem: str, suffix: str = "") -> str:
    """A file name holding the bytes NOT_UTF8 between `stem` and `suffix`, as Python gets it (os.fsdecode)."""
    return os.fsdecode(stem.encode() + NOT_UTF8 + suffix.encode())


def refuses_not_utf8(folder: Path) -> bool:
    """True when the file system under `folder` refuses a name that is not UTF-8 (macOS, ZFS utf8only)."""
    probe = folder / not_utf8("probe")
    try:
        probe.write_bytes(b"")
    except (OSError, UnicodeEncodeError):
        return True
    probe.unlink()
    return False


def make_not_utf8_corpus(root: Path) -> Path:
    """A split-layout folder named `root` + NOT_UTF8, with a readable and a truncated image named with NOT_UTF8
    in train/cat and in test/dog (3 + 1 cats and 3 dogs in train).

    Returns:
        The data folder.
    """
    data = root.parent / not_utf8(root.name)
    for split, count in (("train", 3), ("val", 2), ("test", 2)):
        for seed, name in enumerate(("cat", "dog")):
            _class_folder(data / split / name, seed + 10 * len(split), count)
    for folder in (data / "train" / "cat", data / "test" / "dog"):
        _random_rgb(folder / not_utf8("good", ".png"), 21)
        _random_rgb(folder / not_utf8("bad", ".jpg"), 22, size=64)
        truncated = (folder / not_utf8("bad", ".jpg")).read_bytes()
        (folder / not_utf8("bad", ".jpg")).write_bytes(truncated[: len(truncated) // 2])
    return data


# ----- crafted model files: bundles, checkpoints, ONNX graphs, recipes and run configs ----------------
HUB_BACKBONE = "hf-hub:attacker/evil-model"  # timm fetches this architecture's config from the hub
PYTHON_TAG = "!!python/object/apply:os.system"  # a full yaml.load would run the shell command


def edited_bundle(bundle: Path, dest: Path, **changes: object) -> Path:
    """A copy of the export bundle `bundle` at `dest` whose config.json has the keys in `changes` replaced."""
    import json
    import shutil

    shutil.copytree(bundle, dest)
    config = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**config, **changes}, indent=2))
    return dest


def write_nested_json(path: Path, depth: int = 100_000) -> Path:
    """A JSON array nested `depth` deep: json.loads raises RecursionError far below 100000."""
    path.write_text("[" * depth + "]" * depth)
    return path


def write_nested_yaml(path: Path, depth: int = 100_000) -> Path:
    """A YAML mapping whose one value is a flow sequence nested `depth` deep."""
    path.write_text("epochs: " + "[" * depth + "]" * depth + "\n")
    return path


def write_python_tag_yaml(path: Path, marker: Path, extra: str = "") -> Path:
    """YAML whose `epochs` is a python/object/apply tag that would `touch marker` if it were ever constructed."""
    path.write_text(f"{extra}epochs: {PYTHON_TAG} ['touch {marker}']\n")
    return path


def point_onnx_at(model: Path, dest: Path, location: str) -> Path:
    """A copy of the ONNX file `model` whose largest initializer keeps its data in the external file `location`."""
    import onnx

    proto = onnx.load(str(model))
    tensor = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    size = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(size))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    dest.write_bytes(proto.SerializeToString())
    return dest


def truncated_copy(path: Path, dest: Path, keep: float = 0.5) -> Path:
    """The first `keep` share of the bytes of `path`: a download or copy cut short."""
    data = path.read_bytes()
    dest.write_bytes(data[: int(len(data) * keep)])
    return dest


class _ShellCommand:
    """Pickles as a call to os.system: what torch.load(weights_only=False) would run on loading."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def write_pickled_call_checkpoint(checkpoint: Path, dest: Path, marker: Path) -> Path:
    """A copy of a checkpoint of this toolkit with an object that runs `touch marker` when unpickled."""
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt["callbacks"] = {"hook": _ShellCommand(f"touch {marker}")}
    torch.save(ckpt, dest)
    return dest


def checkpoint_naming(checkpoint: Path, dest: Path, backbone: str) -> Path:
    """A copy of a checkpoint of this toolkit that names `backbone` wherever it records one."""
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt.setdefault("finetune", {})["backbone"] = backbone
    if ckpt["hyper_parameters"].get("config"):
        ckpt["hyper_parameters"]["config"]["backbone"] = backbone
    torch.save(ckpt, dest)
    return dest


def write_alias_bomb_yaml(path: Path, levels: int = 7, key: str = "epochs") -> Path:
    """YAML whose `key` is `levels` nested lists of 9 aliases each: a few hundred bytes, 9**levels values."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    path.write_text("\n".join(lines) + f"\n{key}: *l{levels - 1}\n")
    return path


# ----- faults: a full disk and signals --------------------------------------------------------------------------
@contextlib.contextmanager
def small_filesystem(where: Path, size: str = "2m") -> Iterator[Path | None]:
    """A tmpfs of `size` mounted at `where` for the block (None where this process may not mount one)."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True).returncode == 0
    try:
        yield where if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def disk_full_after(limit: int):
    """An `open` for finetune.atomic whose binary files raise ENOSPC once `limit` bytes are written, as a
    full disk does (monkeypatch.setattr(finetune.atomic, "open", disk_full_after(n), raising=False))."""
    import builtins
    import errno

    class Filling:
        def __init__(self, f):
            self._f, self._written = f, 0

        def write(self, data):
            if self._written + len(data) > limit:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self._written += len(data)
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

    def fake_open(path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        return Filling(f) if "b" in mode else f

    return fake_open


def wait_for(path: Path, process, timeout: float = 240) -> None:
    """Waits until `path` exists (or the process ends, or `timeout` seconds pass)."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
