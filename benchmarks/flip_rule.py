"""The `--augment auto` flip decision on sets where mirroring keeps the class and sets where it does not.

For each set (an image folder written here) the script profiles the train split as `finetune run`
does and prints three decisions side by side:

- old: the mirror images' own nearest-neighbour top-1 against the originals' (the rule this one
  replaced), off when it falls by more than two standard errors;
- matched: the mirror images' top-1 against the originals' top-1 among references no nearer than
  the mirror image's nearest (an alternative that removes near-duplicates by distance), off when
  the paired fall exceeds two standard errors;
- new: `DataProfile.flip_changes_label` (finetune/data/profile.py, `flip_test`): the originals'
  top-1 with the labelled mirror images among the references.

Sets: the real tasks (finetune/data/real.py) at several train sizes; crops of scikit-image and
scikit-learn photos (a cat, a coffee cup, an astronaut...) around each photo's middle or anywhere in it;
and sets where mirroring changes the class: digits (scikit-learn, upscaled), letters drawn with PIL's
bundled font and a TrueType font found on the machine, arrows. `--train` also fine-tunes
tf_efficientnet_lite0 (ImageNet weights) at 32 px with `--augment light` (flip) and `none` on a few
sets and scores test top-1, to show what flipping does to a network there.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/flip_rule.py           # the decisions: ~25 min on 2 shared cores
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/flip_rule.py --train   # flip against none: ~25 min
"""
from __future__ import annotations

import argparse
import itertools
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from finetune.data.profile import PROFILE_SEED, _sample, _unit_rows, flip_test, profile_training_set
from finetune.data.real import TASKS, available, make_real_task
from finetune.data.scan import scan_image_folder
from finetune.data.synthetic import draw_letter

SPLITS = {"val": 10, "test": 40}  # val and test images per class, for --train (the profile reads train only)
PHOTOS_5 = ("chelsea", "coffee", "astronaut", "rocket", "china.jpg")  # a cat, a cup, an astronaut, a rocket, a temple
PHOTOS_8 = PHOTOS_5 + ("flower.jpg", "stereo_motorcycle", "hubble_deep_field")
CROP_SIDES = ((32, 48), (64, 96), (96, 160))
AROUND = 0.1  # crops "of an object": centres within 10% of the photo's side from its middle


# ----- the sets ------------------------------------------------------------------------------------
Draw = Callable[[str, np.random.Generator], Image.Image]


def write_folder(root: Path, classes: list[str], draw: Draw, train: int, seed: int, held_out: bool = False) -> Path:
    """DIR/train/<class>/*.png of `draw(class, rng)` images, and val/ and test/ (SPLITS) if `held_out`."""
    rng = np.random.default_rng(seed)
    for split, count in ({"train": train, **SPLITS} if held_out else {"train": train}).items():
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                draw(cls, rng).save(root / split / cls / f"{i}.png")
    return root


def _photo(name: str) -> np.ndarray:
    if name.endswith(".jpg"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)
    import skimage.data

    img = getattr(skimage.data, name)()
    return img[0] if name == "stereo_motorcycle" else img  # (left, right, disparity): the left view


def photo_crops(sides: tuple[int, int], around: float | None) -> Draw:
    """Square crops of `sides` px; centres within `around` of the middle (None: anywhere)."""
    photos: dict[str, np.ndarray] = {}

    def draw(name: str, rng: np.random.Generator) -> Image.Image:
        photo = photos.setdefault(name, _photo(name))
        h, w = photo.shape[:2]
        side = int(rng.integers(sides[0], sides[1] + 1))
        if around is None:
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        else:
            cy, cx = h / 2 + rng.uniform(-around, around) * h, w / 2 + rng.uniform(-around, around) * w
            y, x = int(np.clip(cy - side / 2, 0, h - side)), int(np.clip(cx - side / 2, 0, w - side))
        return Image.fromarray(photo[y:y + side, x:x + side])

    return draw


def digits(size: int = 32) -> Draw:
    """scikit-learn's 8x8 digits (1797 scans), upscaled to `size`, drawn without repeats."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = {c: list(np.flatnonzero(data.target == int(c))) for c in map(str, range(10))}

    def draw(cls: str, rng: np.random.Generator) -> Image.Image:
        i = order[cls].pop(int(rng.integers(len(order[cls]))))
        img = Image.fromarray((data.images[i] * 255 / 16).astype(np.uint8))
        return img.resize((size, size), Image.Resampling.BILINEAR)

    return draw


def truetype_font() -> str | None:
    """A TrueType font on this machine (DejaVu Sans where there is one), else None."""
    found = sorted(Path("/usr/share/fonts").rglob("*.ttf")) if Path("/usr/share/fonts").is_dir() else []
    preferred = [f for f in found if f.name == "DejaVuSans.ttf"]
    return str((preferred or found)[0]) if found else None


def letters(font: str | None, size: int = 32) -> Draw:
    """A letter of random size (18-27 px) and position (3 px either way); `font` None: PIL's bundled one."""

    def draw(ch: str, rng: np.random.Generator) -> Image.Image:
        return draw_letter(ch, rng, size, font)

    return draw


def arrow(direction: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """An arrow at a random height and length (tests/conftest.py's), turned for up and down."""
    img = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(img)
    y, half = int(rng.integers(10, size - 10)), int(rng.integers(8, 13))
    x0, x1 = size // 2 - half, size // 2 + half
    d.line([(x0, y), (x1, y)], fill=255, width=3)
    tip, back = (x1, x1 - 7) if direction in ("right", "down") else (x0, x0 + 7)
    d.polygon([(tip, y), (back, y - 6), (back, y + 6)], fill=255)
    return img.transpose(Image.Transpose.ROTATE_270) if direction in ("up", "down") else img


@dataclass(frozen=True)
class FlipSet:
    group: str  # the summary's row
    name: str
    per_class: int
    make: Callable[[Path], Path]  # writes the folder under the given root, returns it


def flip_sets(quick: bool) -> Iterator[FlipSet]:
    seeds = (0,) if quick else (0, 1)
    sizes = {"textures": (5, 20, 100, 400), "faces": (5, 20, 50), "silhouettes": (5, 20, 100, 600)}
    for task, seed in itertools.product(TASKS, seeds):
        if available(task):
            for n in sizes[task]:
                yield FlipSet(f"{task} (keeps)", f"{task} s{seed}", n,
                              lambda r, t=task, n=n, s=seed: make_real_task(t, r, n, s))
    for photos, sides, n, around, seed in itertools.product((PHOTOS_5, PHOTOS_8), CROP_SIDES, (10, 30, 40, 100),
                                                             (AROUND, None), seeds):
        where = "around the middle" if around else "anywhere"
        name = f"{len(photos)} photos, {sides[0]}-{sides[1]} px crops {where} s{seed}"
        yield FlipSet(f"photo crops {where} (keeps)", name, n, lambda r, p=photos, c=sides, a=around, n=n, s=seed:
                      write_folder(r, list(p), photo_crops(c, a), n, s))
    for n, seed in itertools.product((5, 10, 20, 40, 100), seeds):
        yield FlipSet("digits (changes)", f"digits s{seed}", n,
                      lambda r, n=n, s=seed: write_folder(r, list("0123456789"), digits(), n, s))
    fonts = {"PIL's font": None, Path(truetype_font() or "").name: truetype_font()}
    for chars, (label, font), n, seed in itertools.product(("bdpq", "bdpqaegk", "abcdefghijklmnopqrstuvwxyz"),
                                                           fonts.items(), (10, 20, 40), seeds):
        if label:
            short = chars[:8] + ("..." if len(chars) > 8 else "")
            yield FlipSet(f"letters {short} (changes)", f"letters {short}, {label} s{seed}", n,
                          lambda r, c=chars, f=font, n=n, s=seed: write_folder(r, list(c), letters(f), n, s))
    for dirs, n, seed in itertools.product((("left", "right"), ("left", "right", "up", "down")), (5, 10, 20, 40),
                                           seeds):
        yield FlipSet(f"arrows {'/'.join(dirs)} (changes)", f"arrows {'/'.join(dirs)} s{seed}", n,
                      lambda r, d=dirs, n=n, s=seed: write_folder(r, list(d), arrow, n, s))


# ----- the decisions -------------------------------------------------------------------------------
def old_rule(nn: float, nn_flipped: float, n: int, classes: int) -> bool:
    """The rule flip_test replaced: the mirror images' top-1 fell by more than two standard errors."""
    if math.isnan(nn) or n == 0:
        return False
    chance = 1.0 / classes
    se = math.sqrt(max(nn * (1 - nn), 1.0 / n) / n)
    return nn > chance + 2 * math.sqrt(chance * (1 - chance) / n) and nn - nn_flipped > 2 * se


def matched_rule(images: list[np.ndarray], labels: np.ndarray) -> tuple[float, float, float, bool]:
    """The mirror images' top-1 against the originals' top-1 among the references no nearer than the
    mirror image's nearest neighbour (near-duplicates removed by distance); paired 2-SE margin."""
    x, xf = _unit_rows(images), _unit_rows([im[:, ::-1] for im in images])
    direct, cross = x @ x.T, xf @ x.T
    np.fill_diagonal(direct, -np.inf)
    np.fill_diagonal(cross, -np.inf)
    reach = cross.max(axis=1, keepdims=True)
    matched = labels[np.where(direct <= reach, direct, -np.inf).argmax(axis=1)] == labels
    mirrored = labels[cross.argmax(axis=1)] == labels
    d = matched.astype(float) - mirrored
    margin = 2 * math.sqrt(max(float(d.var()), 1 / len(d)) / len(d))
    return float(matched.mean()), float(mirrored.mean()), margin, bool(d.mean() > margin)


@dataclass
class Row:
    group: str
    name: str
    per_class: int
    classes: int
    n: int
    nn: float
    nn_flipped: float
    old: bool
    matched: tuple[float, float, float, bool]
    with_mirrors: float
    margin: float
    new: bool
    seconds: float


def measure(flip_set: FlipSet, work: Path) -> Row:
    folder = flip_set.make(work / "set")
    index = scan_image_folder(folder)
    start = time.perf_counter()
    profile = profile_training_set(index)
    seconds = time.perf_counter() - start
    images, labels = _sample(index, PROFILE_SEED)  # the sample the profile read
    n = flip_test(images, labels).images
    shutil.rmtree(work / "set")
    return Row(flip_set.group, flip_set.name, flip_set.per_class, profile.classes, n, profile.flip_nn,
               profile.flip_nn_flipped, old_rule(profile.flip_nn, profile.flip_nn_flipped, n, profile.classes),
               matched_rule(images, labels), profile.flip_nn_with_mirrors, profile.flip_margin,
               profile.flip_changes_label, seconds)


def _off(flag: bool) -> str:
    return "**off**" if flag else "on"


def table(rows: list[Row]) -> list[str]:
    lines = ["| set | per class | sampled | old: top-1 -> mirror images | old | matched: originals vs mirror images "
             "(margin) | matched | new: top-1 -> with labelled mirrors (margin) | new | profile s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r.matched
        lines.append(f"| {r.name} | {r.per_class} | {r.n} | {r.nn:.2f} -> {r.nn_flipped:.2f} | {_off(r.old)} | "
                     f"{m[0]:.2f} vs {m[1]:.2f} ({m[2]:.2f}) | {_off(m[3])} | {r.nn:.2f} -> {r.with_mirrors:.2f} "
                     f"({r.margin:.2f}) | {_off(r.new)} | {r.seconds:.2f} |")
    return lines


def summary(rows: list[Row]) -> list[str]:
    lines = ["| sets (does mirroring keep the class?) | count | old off | matched off | new off |",
             "|---|---|---|---|---|"]
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(r.group, []).append(r)
    for group, rs in groups.items():
        lines.append(f"| {group} | {len(rs)} | {sum(r.old for r in rs)} | {sum(r.matched[3] for r in rs)} | "
                     f"{sum(r.new for r in rs)} |")
    return lines


# ----- --train: what flipping does to a network ----------------------------------------------------
TRAIN_SETS = {
    "digits": lambda r, s: write_folder(r, list("0123456789"), digits(), 20, s, held_out=True),
    "letters bdpq (PIL's font)": lambda r, s: write_folder(r, list("bdpq"), letters(None), 20, s, held_out=True),
    "5 photos, 64-96 px crops around the middle": lambda r, s: write_folder(
        r, list(PHOTOS_5), photo_crops((64, 96), AROUND), 20, s, held_out=True),
    "silhouettes": lambda r, s: make_real_task("silhouettes", r, 10, s),
}


def train_check(work: Path, seeds: int) -> list[str]:
    """Test top-1 of `finetune run` with --augment light (resize, crop, flip) and none (no flip)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from quality import IMAGENET_BACKBONE, finetune_run

    lines = ["| set | train per class | no flip (none) | flip (light) | flip - no flip, per seed |",
             "|---|---|---|---|---|"]
    for name, make in TRAIN_SETS.items():
        data = make(work / "train-set", 0)  # one set; the seeds vary the training
        per = len(list(next((data / "train").iterdir()).iterdir()))
        tops = {aug: [finetune_run(data, IMAGENET_BACKBONE, "imagenet", 32, seed, work / f"run-{aug}-{seed}",
                                   {"augment": aug, "workers": 0})[1] for seed in range(seeds)]
                for aug in ("none", "light")}
        diffs = ", ".join(f"{b - a:+.3f}" for a, b in zip(tops["none"], tops["light"]))
        lines.append(f"| {name} | {per} | {np.mean(tops['none']):.3f} | {np.mean(tops['light']):.3f} | {diffs} |")
        print(lines[-1], flush=True)
        shutil.rmtree(work / "train-set")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed a set instead of two")
    parser.add_argument("--train", action="store_true", help="the training check instead of the decisions")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds a cell (--train)")
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.train:
            lines = train_check(Path(tmp), args.seeds)
        else:
            rows = []
            for flip_set in flip_sets(args.quick):
                rows.append(measure(flip_set, Path(tmp)))
                print(table([rows[-1]])[-1], flush=True)
            lines = summary(rows) + ["", f"Slowest profile: {max(r.seconds for r in rows):.2f} s.", ""] + table(rows)
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
