"""Run an exported bundle without the training stack: `Predictor.load(BUNDLE)`.

Imports only numpy, PIL, onnx (to check a graph's external data before onnxruntime opens it) and
onnxruntime (torch only for backend="torchscript" or "eager"): no Lightning, no albumentations.
Preprocessing is rebuilt from the bundle's config.json with the same PIL + numpy functions the
training eval transform calls, so the network sees identical tensors.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from finetune.data.data_config import DataConfig
from finetune.data.images import BadImageError, is_image_file, load_images
from finetune.data.scan import walk_files
from finetune.data.tta import average_views, batch_inputs, check_tta, softmax, view_count
from finetune.errors import FinetuneError
from finetune.models.source import BundleConfig, BundleError, resolve_model_source
from finetune.pathtext import check_model_path

BACKENDS = ("onnx", "torchscript", "eager")
Runner = Callable[[np.ndarray], np.ndarray]  # (B, 3, S, S) float32 -> (B, C) logits


@dataclass
class Prediction:
    """The result for one image file.

    Attributes:
        path: The file.
        classes: Top-k class names, most probable first (empty when `error` is set).
        probabilities: Their probabilities, same order.
        error: Why the file could not be classified, or None.
    """

    path: str
    classes: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    error: str | None = None


def onnx_runner(path: Path, threads: int | None = None) -> Runner:
    """An onnxruntime CPU session over an ONNX file with one input and logits as first output.

    Raises:
        BundleError: A tensor's external data lies outside the file's folder (checked before onnxruntime
            opens anything), or onnxruntime refuses the file.
    """
    import onnxruntime as ort

    check_external_data(path)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types (Fail, InvalidProtobuf...)
        raise BundleError(f"onnxruntime cannot load {path} ({_first_line(e)}); re-export the bundle with "
                          f"`finetune export`") from None
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def check_external_data(path: Path) -> None:
    """Refuses an ONNX file whose tensors keep their data in a file outside its own folder.

    onnxruntime reads external data relative to the model's folder; a location that is absolute, climbs
    out with "..", or resolves outside through a link would read another file of this machine.

    Raises:
        BundleError: Naming the tensor and its location; or the file is not a readable ONNX model.
    """
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError, onnx's own errors
        raise BundleError(f"{path} is not a readable ONNX model ({_first_line(e)})") from None
    folder = path.parent.resolve()
    for tensor in _onnx_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise BundleError(f"{path}: tensor '{tensor.name}' keeps its data in {location!r}, outside the "
                              f"bundle {path.parent}; a bundle's model may only read files inside its own folder")


def _onnx_tensors(model) -> Iterable:  # noqa: ANN001 - onnx.ModelProto; onnx is imported where it is used
    """Every TensorProto of an ONNX model: initializers, sparse ones and node attributes, subgraphs and
    functions included (walked with a stack, not recursion)."""
    graphs, nodes = [model.graph], [n for f in model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            for sparse in graph.sparse_initializer:
                yield from (sparse.values, sparse.indices)
            nodes.extend(graph.node)
            continue
        for attribute in nodes.pop().attribute:
            yield from (attribute.t, *attribute.tensors)
            for sparse in (attribute.sparse_tensor, *attribute.sparse_tensors):
                yield from (sparse.values, sparse.indices)
            graphs.extend((attribute.g, *attribute.graphs))


def torchscript_runner(path: Path) -> Runner:
    """A TorchScript module loaded on CPU (imports torch).

    Raises:
        BundleError: torch cannot load the file (truncated, not TorchScript).
    """
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError and its own types for a bad archive
        raise BundleError(f"{path} cannot be loaded as TorchScript ({_first_line(e)}); re-export the bundle "
                          f"with `finetune export --format torchscript`") from None
    return module_runner(module.eval())


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def eager_runner(bundle: Path, config: BundleConfig) -> Runner:
    """The network rebuilt from model.safetensors with timm/torchvision (imports torch).

    Raises:
        UnknownBackboneError: config.json names a backbone that is not installed code (`rebuild_backbone`).
    """
    from finetune.models.backbone import rebuild_backbone

    backbone, _ = rebuild_backbone(config.backbone, config.num_classes, bundle / "model.safetensors",
                                   config.build_options, str(bundle / "config.json"))
    return module_runner(backbone.eval())


def module_runner(module: Callable, auto_device: bool = False) -> Runner:
    """Wraps an eval-mode torch module as a numpy runner (moved to the GPU if `auto_device` and present)."""
    import torch

    device = "cuda" if auto_device and torch.cuda.is_available() else "cpu"
    if device != "cpu":
        module = module.to(device)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x).to(device)).float().cpu().numpy()

    return run


class Predictor:
    """Classifies image files or arrays with one model: preprocessing, TTA, temperature, top-k.

    Attributes:
        class_names: Class names in output index order.
        data_config: Resize, crop, mean and std the model expects.
        tta: Default TTA mode (from config.json unless overridden).
        temperature: Logits are divided by it before the softmax (1.0: uncalibrated).

    Example:
        >>> predictor = Predictor.load("runs/x/model")                 # doctest: +SKIP
        >>> predictor.predict_files(["cat.jpg"], top_k=3)[0].classes
    """

    def __init__(self, runner: Runner, class_names: Sequence[str], data_config: DataConfig,
                 tta: str = "none", temperature: float = 1.0, batch_size: int = 32):
        self.runner, self.class_names, self.data_config = runner, list(class_names), data_config
        self.tta, self.temperature, self.batch_size = check_tta(tta), float(temperature), batch_size

    @classmethod
    def load(cls, bundle: str | Path, backend: str = "onnx", tta: str | None = None,
             int8: bool = False, threads: int | None = None) -> "Predictor":
        """Loads a bundle directory.

        Args:
            bundle: A folder written by `finetune export` (config.json, model.onnx, ...).
            backend: "onnx" (onnxruntime), "torchscript" (model.ts) or "eager" (timm/torchvision).
            tta: TTA mode; None uses the bundle's default.
            int8: With backend "onnx", run the int8 model (model.int8.onnx) when the bundle has one.
            threads: onnxruntime intra-op threads (None: onnxruntime's default).
        """
        check_model_path(bundle, "model bundle")  # before onnxruntime or safetensors meet its path
        bundle, config = Path(bundle), BundleConfig.load(bundle)
        runner = _bundle_runner(bundle, config, backend, int8, threads)
        return cls(runner, config.class_names, config.data_config, tta=tta or config.tta,
                   temperature=config.temperature)

    @classmethod
    def from_path(cls, path: str | Path, backend: str = "onnx", tta: str | None = None) -> "Predictor":
        """A bundle, a run directory (its model/ bundle, else its best checkpoint) or a .ckpt file.

        Checkpoints run eagerly and need the training stack (torch, Lightning, timm).

        Raises:
            FinetuneError: The path is none of these (the message lists what is expected).
        """
        source = resolve_model_source(path)
        if source.bundle is not None:
            return cls.load(source.bundle, backend=backend, tta=tta)
        return cls.from_checkpoint(source.checkpoint, tta=tta)

    @classmethod
    def from_checkpoint(cls, path: str | Path, tta: str | None = None) -> "Predictor":
        """Runs a run directory's best checkpoint (or a .ckpt file) eagerly, on a GPU when present."""
        from finetune.training.checkpoint import load_trained

        return cls.from_trained(load_trained(path), tta=tta)

    @classmethod
    def from_trained(cls, trained, tta: str | None = None) -> "Predictor":
        """Runs a loaded `finetune.training.checkpoint.TrainedModel` eagerly, on a GPU when present."""
        return cls(module_runner(trained.backbone, auto_device=True), trained.class_names, trained.data_config,
                   tta=tta or trained.setting("tta"))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def inputs(self, images: Sequence[np.ndarray], tta: str | None = None) -> np.ndarray:
        """Network inputs of decoded images, shape (N * V, 3, S, S) float32, V views per image."""
        return batch_inputs(list(images), self.data_config, tta or self.tta)

    def logits(self, images: Sequence[np.ndarray], tta: str | None = None) -> np.ndarray:
        """Raw logits of every view, shape (N * V, C); views of an image are consecutive."""
        x = self.inputs(images, tta)
        step = self.batch_size * view_count(tta or self.tta)  # all views of an image in one forward pass
        return np.concatenate([self.runner(x[i:i + step]) for i in range(0, len(x), step)])

    def probabilities(self, images: Sequence[np.ndarray], tta: str | None = None) -> np.ndarray:
        """Class probabilities of decoded RGB images (H, W, 3) uint8, shape (N, C).

        Each view's softmax(logits / temperature) is computed, then the views are averaged.
        """
        if len(images) == 0:
            return np.zeros((0, self.num_classes))
        tta = tta or self.tta
        return self.probabilities_of(self.logits(images, tta), tta)

    def probabilities_of(self, logits: np.ndarray, tta: str | None = None) -> np.ndarray:
        """(N, C) probabilities from the (N * V, C) logits of `logits()`: each view's
        softmax(logits / temperature), averaged over the V views of an image."""
        tta = tta or self.tta
        return average_views(softmax(logits, self.temperature), view_count(tta))

    def predict_files(self, paths: Iterable[str | Path], top_k: int = 5, tta: str | None = None) -> list[Prediction]:
        """Top-k predictions per file; unreadable files get `error` set and do not stop the rest."""
        return predict_files(self, paths, top_k, tta)


class Ensemble:
    """Averages the probabilities of several predictors over the same classes (in the same order).

    Each member keeps its own preprocessing (input size, mean/std) and temperature.
    """

    def __init__(self, members: Sequence[Predictor]):
        if not members:
            raise FinetuneError("an ensemble needs at least one model")
        for m in members[1:]:
            if m.class_names != members[0].class_names:
                raise FinetuneError(f"ensemble members disagree on classes: "
                                    f"{members[0].class_names} vs {m.class_names}")
        self.members = list(members)
        self.class_names = members[0].class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def probabilities(self, images: Sequence[np.ndarray], tta: str | None = None) -> np.ndarray:
        """Mean of the members' (N, C) probabilities."""
        return np.mean([m.probabilities(images, tta) for m in self.members], axis=0)

    def predict_files(self, paths: Iterable[str | Path], top_k: int = 5, tta: str | None = None) -> list[Prediction]:
        return predict_files(self, paths, top_k, tta)


def _bundle_runner(bundle: Path, config: BundleConfig, backend: str, int8: bool, threads: int | None) -> Runner:
    if backend not in BACKENDS:
        raise FinetuneError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "eager":
        return eager_runner(bundle, config)
    name = "model.ts" if backend == "torchscript" else ("model.int8.onnx" if int8 else "model.onnx")
    if not (bundle / name).is_file():
        how = ("--format torchscript" if backend == "torchscript"
               else "--quantize int8" if int8 else "the default format")
        raise FinetuneError(f"{bundle} has no {name}; export it with `finetune export` ({how})")
    return torchscript_runner(bundle / name) if backend == "torchscript" else onnx_runner(bundle / name, threads)


def expand_paths(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, plus the image files under each folder (recursive, sorted)."""
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            out.extend(sorted(p for p in walk_files(item) if is_image_file(p)))  # as the scan: hidden files skipped
        else:
            out.append(item)  # kept even when missing or not an image: reported per file
    return out


def _decode(paths: list[Path]) -> tuple[list[tuple[int, np.ndarray]], dict[int, str]]:
    ok, errors = [], {}
    for i, image in enumerate(load_images(paths)):  # a missing file, a broken link: BadImageError with the reason
        if isinstance(image, BadImageError):
            errors[i] = str(image)
        else:
            ok.append((i, image))
    return ok, errors


def predict_files(model: Predictor | Ensemble, paths: Iterable[str | Path], top_k: int = 5,
                  tta: str | None = None, chunk: int = 64) -> list[Prediction]:
    """Top-k predictions per file for a predictor or an ensemble, one result per input path.

    Files are decoded and classified `chunk` at a time, so memory stays flat for large folders.
    A `top_k` above the class count lists every class (the default 5 on a 3-class model gives 3).

    Raises:
        FinetuneError: `top_k` below 1.
    """
    k = check_top_k(top_k, model.num_classes)
    paths = expand_paths(paths)
    results: list[Prediction] = []
    for start in range(0, len(paths), chunk):
        part = paths[start:start + chunk]
        ok, errors = _decode(part)
        probs = model.probabilities([img for _, img in ok], tta)
        rows = {i: p for (i, _), p in zip(ok, probs)}
        for i, path in enumerate(part):
            results.append(Prediction(str(path), error=errors[i]) if i in errors
                           else _top_k(str(path), rows[i], model.class_names, k))
    return results


def check_top_k(top_k: int, num_classes: int) -> int:
    """The number of classes to list: `top_k` capped at `num_classes`; FinetuneError when below 1."""
    if top_k < 1:
        raise FinetuneError(f"--top-k {top_k} is out of range: valid 1 to {num_classes} "
                            f"(the model's {num_classes} classes; a larger value lists them all)")
    return min(top_k, num_classes)


def _top_k(path: str, probs: np.ndarray, class_names: list[str], k: int) -> Prediction:
    order = np.argsort(-probs, kind="stable")[:k]
    return Prediction(path, [class_names[j] for j in order], [float(probs[j]) for j in order])
