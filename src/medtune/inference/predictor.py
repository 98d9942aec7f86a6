"""A trained model ready for whole-volume inference, from a run directory or an adapter folder.

`load_predictor(path)` accepts either

- a run directory written by `medtune train` (`config.yaml` + `adapter/`), or
- an adapter-only folder (`adapter_config.json` + `adapter_model.safetensors`), alone or inside
  a run directory.

Everything inference needs travels in the adapter's `extra` (written by training): the dataset
properties (`extra["dataset"]`: channel names, labels, regions, the `"medtune"` label
conventions, normalisation, target spacing, slice axis), the training window
`extra["crop_size"]` and the sliding-window overlap `extra["sw_overlap"]`. When the adapter lacks them, the run's
`config.yaml` (and its preprocessing cache) fills them in.

A backbone trained from random initialisation (`pretrained: false`) is not stored in the
adapter; it is rebuilt with the run's seed (`train.seed` of `config.yaml`, else
`extra["seed"]`, else 0) and checked against the adapter's recorded backbone hash.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medtune.artifacts.adapters import CONFIG_NAME
from medtune.artifacts.run_dir import RunDir, resolve_model_dir
from medtune.core.errors import BackboneMismatchError, MedtuneInputError
from medtune.data.props import DatasetProps
from medtune.inference.options import InferenceOptions, apply_options
from medtune.inference.sliding_window import DEFAULT_OVERLAP

if TYPE_CHECKING:
    from medtune.inference.ensemble import EnsemblePredictor

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | None) -> torch.device:
    """`auto`/None -> CUDA when available else CPU; `cuda[:N]` without CUDA raises (one line)."""
    name = "auto" if device is None else str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise MedtuneInputError(
                f"--device {name}: expected a CUDA GPU, found none "
                f"(torch {torch.__version__}, torch.cuda.is_available() is False); use --device cpu"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MedtuneInputError(
                f"--device {name}: expected a GPU index below {torch.cuda.device_count()}, found {dev.index}"
            )
        return dev
    raise MedtuneInputError(f"--device: expected one of {', '.join(DEVICES)}, found {name!r}")


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch, numpy and random as `medtune train` does before building the model; the
    caller's random states are restored afterwards."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


@dataclass
class CasePrediction:
    """One case predicted in the preprocessed grid, and what maps it back to its input file."""

    probs: torch.Tensor
    """Class probabilities `(K, D, H, W)` float32 (CPU)."""
    labels: np.ndarray
    """Most probable class index per voxel `(D, H, W)` uint8."""
    meta: dict[str, Any]
    """Geometry record of `preprocess_image` (for `restore_to_original`)."""


@dataclass
class Predictor:
    """A model plus what whole-volume inference needs to run it as it was trained.

    Attributes:
        model: callable mapping windows `(B, C, d, h, w)` to logits `(B, K, d, h, w)`.
        props: the training dataset's properties (channels, labels, regions, conventions,
            normalisation, target spacing).
        window: sliding window `(d, h, w)`, the training crop.
        overlap: sliding-window overlap (paper: 2/3, i.e. a stride of 1/3 window).
        sw_batch_size: windows per model call.
        device: where the model runs; stitching stays on the CPU.
    """

    model: Callable[[torch.Tensor], torch.Tensor]
    props: DatasetProps
    window: tuple[int, int, int]
    overlap: float = DEFAULT_OVERLAP
    sw_batch_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    source: str = ""
    """Where the model came from (adapter folder), for reports."""
    run_dir: Path | None = None
    run_config: Any = None
    """The run's `ExperimentConfig`, when loaded from a run directory."""
    autocast: torch.dtype | None = None
    """Autocast dtype of the model calls (None: fp32); see `medtune.inference.options`."""
    fuse_note: str = ""
    """What BatchNorm folding did (`medtune.inference.fuse.checked_fuse`), for reports."""

    def __post_init__(self) -> None:
        self.window = tuple(int(v) for v in self.window)  # type: ignore[assignment]
        if len(self.window) != 3 or min(self.window) < 1:
            raise MedtuneInputError(
                f"window: expected 3 positive ints (d, h, w), found {self.window}"
            )
        if not self.props.normalisation:
            raise MedtuneInputError(
                f"{self.source or 'dataset properties'}: expected the per-channel normalisation "
                "of the training data, found none"
            )

    def predict_probs(
        self, image: np.ndarray | torch.Tensor, tta: str = "none", progress: bool = False
    ) -> torch.Tensor:
        """Probabilities `(K, D, H, W)` float32 (CPU) of a preprocessed image `(C, D, H, W)`."""
        from medtune.inference.sliding_window import predict_volume

        return predict_volume(
            self.model,
            torch.from_numpy(np.ascontiguousarray(image))
            if isinstance(image, np.ndarray)
            else image,
            window=self.window,
            overlap=self.overlap,
            tta=tta,
            sw_batch_size=self.sw_batch_size,
            device=self.device,
            stitch_device="cpu",
            autocast=self.autocast,
            num_classes=self.props.num_classes,
            progress=progress,
        )

    def infer_case(
        self,
        files: list[Path],
        tta: str = "none",
        progress: bool = False,
        nonfinite: str = "error",
    ) -> CasePrediction:
        """Preprocess one case from its image files (one per channel, or one 4D file) and
        predict it (sliding windows, optional flip TTA). NaN / Inf voxels are refused, or with
        `nonfinite="zero"` replaced by 0 after normalisation (counted in
        `meta["nonfinite_replaced"]`, per file)."""
        from medtune.inference.sliding_window import probs_to_labels

        image, meta = self.prepare_case(files, nonfinite=nonfinite)
        probs = self.predict_probs(image, tta=tta, progress=progress)
        del image
        return CasePrediction(probs, probs_to_labels(probs), meta)

    def prepare_case(self, files: list[Path], nonfinite: str = "error") -> tuple[np.ndarray, dict]:
        """One case's image files (one per channel, one 4D file, or DICOM series folders) in the
        model's grid: (image `(C, D, H, W)` float32, geometry meta for `restore_to_original`)."""
        from medtune.data.preprocess import preprocess_image

        return preprocess_image(
            files if len(files) > 1 else files[0], self.props, nonfinite=nonfinite
        )


def restore_labels(
    idx: np.ndarray, values: np.ndarray, meta: dict[str, Any], wide_dtype=np.int32
) -> np.ndarray:
    """Class indices `(D, H, W)` -> label `values[idx]` on the input file's voxel grid
    `(X, Y, Z)`; uint8 when the values fit, else `wide_dtype`."""
    from medtune.data.preprocess import restore_to_original

    dtype = np.uint8 if values.min() >= 0 and values.max() < 256 else wide_dtype
    return restore_to_original(values.astype(dtype)[idx], meta)


def _run_config(run: RunDir | None):
    if run is None:
        return None
    from medtune.training.config import load_config

    return load_config(run.config)


def _props(adapter_dir: Path, extra: dict[str, Any], run_cfg) -> DatasetProps:
    """The dataset properties of the adapter's extra, else of the run's cache when it exists."""
    where = str(adapter_dir / CONFIG_NAME)
    if extra.get("dataset"):
        return DatasetProps.from_dict(extra["dataset"], f"{where} extra['dataset']")
    if run_cfg is not None and run_cfg.data.cache:
        from medtune.data.preprocess import PROPS_FILE, read_props

        cache = Path(run_cfg.data.cache)
        if (cache / PROPS_FILE).is_file():
            return read_props(cache)
    raise MedtuneInputError(
        f"{where}: expected dataset properties in extra['dataset'] (written by medtune train), "
        "found none and no run cache to read them from"
    )


def _backbone_changes(config: dict[str, Any]) -> list[str]:
    """How the config's `model.backbone` differs from the backbone recorded at training."""
    recorded = config.get("backbone") or {}
    built = (config.get("model") or {}).get("backbone") or {}
    return [
        f"model.backbone.{key} is {built[key]!r}, the adapter was trained with {recorded[key]!r}"
        for key in ("name", "in_chans", "img_size")
        if key in recorded and key in built and built[key] != recorded[key]
    ]


def _build_model(
    adapter_dir: Path, config: dict[str, Any], seed: int, seed_from: str | None
) -> torch.nn.Module:
    """The adapter's model, its frozen backbone rebuilt with `seed` when it was randomly
    initialised; `seed_from` says where the seed was found (None: nowhere, 0 is used)."""
    from medtune.artifacts.adapters import load_adapter

    whole = bool(config.get("whole_model"))
    backbone = (config.get("model") or {}).get("backbone") or {}
    where = adapter_dir / CONFIG_NAME
    try:
        with _seeded(seed):
            return load_adapter(adapter_dir, load_backbone_weights=not whole)
    except BackboneMismatchError as exc:
        changes = _backbone_changes(config)
        if changes:
            raise MedtuneInputError(
                f"{where}: the backbone differs from the one the adapter was trained on: "
                + "; ".join(changes)
            ) from exc
        if backbone.get("pretrained"):
            raise
        if seed_from is None:
            raise MedtuneInputError(
                f"{where}: the adapter's backbone was randomly initialised (pretrained: false) "
                f"and rebuilding it with seed {seed} gives other weights; expected the run "
                "directory (its config.yaml names the seed) or an adapter whose extra has 'seed'"
            ) from exc
        raise MedtuneInputError(
            f"{where}: the adapter's backbone was randomly initialised (pretrained: false); "
            f"rebuilt with seed {seed} ({seed_from}) it has other frozen weights than in "
            "training: model.backbone (e.g. timm_kwargs) or the seed changed since"
        ) from exc


def model_props(path: str | Path) -> DatasetProps:
    """The dataset properties a run directory or adapter folder was trained with, read from its
    files without building the model."""
    from medtune.artifacts.adapters import read_adapter_config

    adapter_dir, run = resolve_model_dir(path)
    extra = read_adapter_config(adapter_dir).get("extra") or {}
    return _props(adapter_dir, extra, _run_config(run))


def load_predictor(
    path: str | Path | list | tuple,
    device: str | None = "cpu",
    sw_batch_size: int | None = None,
    options: InferenceOptions | None = None,
) -> Predictor | EnsemblePredictor:
    """Load the model of a run directory or an adapter folder onto `device` (see module doc);
    a list of several -> an `EnsemblePredictor` of them (`medtune.inference.ensemble`).

    `options` (`InferenceOptions`: window, overlap, batch, precision, fast, BatchNorm folding)
    are applied last. `sw_batch_size` (windows per model call) defaults to `options`', else
    the automatic batch (`medtune.inference.options.auto_sw_batch_size`).
    """
    from medtune.artifacts.adapters import read_adapter_config

    if isinstance(path, list | tuple):
        if len(path) != 1:
            from medtune.inference.ensemble import load_ensemble

            return load_ensemble(path, device, sw_batch_size, options)
        path = path[0]
    adapter_dir, run = resolve_model_dir(path)
    config = read_adapter_config(adapter_dir)
    extra = config.get("extra") or {}
    run_cfg = _run_config(run)
    dev = resolve_device(device)
    props = _props(adapter_dir, extra, run_cfg)
    window = extra.get("crop_size") or (run_cfg.data.crop_size if run_cfg else None)
    if not window:
        raise MedtuneInputError(
            f"{adapter_dir / CONFIG_NAME}: expected the training window in "
            "extra['crop_size'], found none"
        )
    overlap = extra.get("sw_overlap")
    if overlap is None:
        overlap = run_cfg.train.sw_overlap if run_cfg else DEFAULT_OVERLAP
    seed = int(run_cfg.train.seed) if run_cfg else int(extra.get("seed", 0))
    seed_from = (
        f"train.seed of {run.config}" if run_cfg else ("extra['seed']" if "seed" in extra else None)
    )
    num_classes = int((config.get("model") or {}).get("num_classes", 0))
    if num_classes != props.num_classes:
        raise MedtuneInputError(
            f"{adapter_dir / CONFIG_NAME}: the model has {num_classes} classes, its "
            f"dataset properties list {props.num_classes} labels {props.labels}"
        )
    model = _build_model(adapter_dir, config, seed, seed_from)
    model.eval()
    model.to(dev)
    predictor = Predictor(
        model=model,
        props=props,
        window=tuple(window),
        overlap=float(overlap),
        device=dev,
        source=str(adapter_dir),
        run_dir=run.path if run else None,
        run_config=run_cfg,
    )
    opts = options or InferenceOptions()
    if sw_batch_size is not None and opts.sw_batch_size is None:
        opts = dataclasses.replace(opts, sw_batch_size=int(sw_batch_size))
    return apply_options(predictor, opts)
