"""A trained model ready for whole-volume inference, from a run directory or an adapter folder.

`load_predictor(path)` accepts either

- a run directory written by `medtune train` (`config.yaml` + `adapter/`), or
- an adapter-only folder (`adapter_config.json` + `adapter_model.safetensors`), alone or inside
  a run directory.

Everything inference needs travels in the adapter's `extra` (written by training): the dataset
properties (`extra["dataset"]`: channel names, labels, regions, the `"medtune"` label
conventions, normalisation, target spacing), the training window `extra["crop_size"]` and the
sliding-window overlap `extra["sw_overlap"]`. When the adapter lacks them, the run's
`config.yaml` (and its preprocessing cache) fills them in.

A backbone trained from random initialisation (`pretrained: false`) is not stored in the
adapter; it is rebuilt with the run's seed (`train.seed` of `config.yaml`, else
`extra["seed"]`, else 0) and checked against the adapter's recorded backbone hash.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtune.core.errors import MedtuneInputError

RUN_CONFIG = "config.yaml"
ADAPTER_SUBDIR = "adapter"
DEFAULT_OVERLAP = 2 / 3
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


def resolve_model_dir(path: str | Path) -> tuple[Path, Path | None]:
    """(adapter folder, run directory or None) of a run directory or an adapter folder."""
    from medtune.artifacts.adapters import CONFIG_NAME

    p = Path(path)
    if not p.exists():
        raise MedtuneInputError(
            f"{p}: expected a run directory or an adapter folder, found no such path"
        )
    if (p / CONFIG_NAME).is_file():
        run = p.parent if (p.parent / RUN_CONFIG).is_file() else None
        return p, run
    if (p / ADAPTER_SUBDIR / CONFIG_NAME).is_file():
        return p / ADAPTER_SUBDIR, p
    if (p / RUN_CONFIG).is_file():
        raise MedtuneInputError(
            f"{p / ADAPTER_SUBDIR / CONFIG_NAME}: expected the adapter of a finished run, found none "
            "(has training written its first adapter yet?)"
        )
    raise MedtuneInputError(
        f"{p}: expected a run directory (config.yaml + adapter/) or an adapter folder "
        f"({CONFIG_NAME}), found neither"
    )


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
class Predictor:
    """A model plus what whole-volume inference needs to run it as it was trained.

    Attributes:
        model: callable mapping windows `(B, C, d, h, w)` to logits `(B, K, d, h, w)`.
        props: dataset properties (`channel_names`, `labels` name -> value, `regions`,
            `medtune`, `spacing`, `normalisation`), as in a cache's `dataset_props.json`.
        window: sliding window `(d, h, w)`, the training crop.
        overlap: sliding-window overlap (paper: 2/3, i.e. a stride of 1/3 window).
        sw_batch_size: windows per model call.
        device: where the model runs; stitching stays on the CPU.
    """

    model: Callable[[torch.Tensor], torch.Tensor]
    props: dict[str, Any]
    window: tuple[int, int, int]
    overlap: float = DEFAULT_OVERLAP
    sw_batch_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    source: str = ""
    """Where the model came from (adapter folder), for reports."""
    run_dir: Path | None = None
    run_config: Any = None
    """The run's `ExperimentConfig`, when loaded from a run directory."""

    def __post_init__(self) -> None:
        self.window = tuple(int(v) for v in self.window)  # type: ignore[assignment]
        if len(self.window) != 3 or min(self.window) < 1:
            raise MedtuneInputError(
                f"window: expected 3 positive ints (d, h, w), found {self.window}"
            )
        for key in ("channel_names", "labels", "normalisation"):
            if key not in self.props:
                raise MedtuneInputError(
                    f"{self.source or 'dataset properties'}: expected '{key}' in the dataset "
                    f"properties, found keys {sorted(self.props)}"
                )

    @property
    def num_channels(self) -> int:
        return len(self.props["channel_names"])

    @property
    def label_values(self) -> np.ndarray:
        """Class index -> label value of the dataset, `(K,)` int64 (sorted label values)."""
        return np.array(sorted(int(v) for v in self.props["labels"].values()), dtype=np.int64)

    @property
    def conventions(self) -> dict[str, Any]:
        return dict(self.props.get("medtune") or {})

    @property
    def regions(self) -> dict[str, list[int]]:
        regions = self.props.get("regions") or self.conventions.get("regions") or {}
        if not regions:
            regions = {n: [int(v)] for n, v in self.props["labels"].items() if int(v) != 0}
        return {str(k): [int(x) for x in v] for k, v in regions.items()}

    def source_lut(self) -> np.ndarray:
        """Class index -> label value in the source dataset's convention (`source_labels`, e.g.
        BraTS 2019 ET 3 -> 4), `(K,)` int64."""
        src = {int(k): int(v) for k, v in (self.conventions.get("source_labels") or {}).items()}
        return np.array([src.get(int(v), int(v)) for v in self.label_values], dtype=np.int64)

    def predict_probs(
        self, image: np.ndarray | torch.Tensor, tta: str = "none", progress: bool = False
    ) -> torch.Tensor:
        """Probabilities `(K, D, H, W)` float32 (CPU) of a preprocessed image `(C, D, H, W)`."""
        from medtune.inference.sliding_window import predict_volume

        num_classes = len(self.props["labels"])
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
            num_classes=num_classes,
            progress=progress,
        )

    def predict_case(
        self, files: list[Path], tta: str = "none", progress: bool = False
    ) -> tuple[torch.Tensor, np.ndarray, dict[str, Any]]:
        """One case from its image files: probabilities `(K, D, H, W)`, class indices
        `(D, H, W)` (both in the preprocessed grid) and the meta that maps them back."""
        from medtune.data.preprocess import preprocess_image
        from medtune.inference.sliding_window import probs_to_labels

        image, meta = preprocess_image(files if len(files) > 1 else files[0], self.props)
        probs = self.predict_probs(image, tta=tta, progress=progress)
        del image
        return probs, probs_to_labels(probs), meta


def restore_labels(
    idx: np.ndarray, values: np.ndarray, meta: dict[str, Any], wide_dtype=np.int32
) -> np.ndarray:
    """Class indices `(D, H, W)` -> label `values[idx]` on the input file's voxel grid
    `(X, Y, Z)`; uint8 when the values fit, else `wide_dtype`."""
    from medtune.data.preprocess import restore_to_original

    dtype = np.uint8 if values.min() >= 0 and values.max() < 256 else wide_dtype
    return restore_to_original(values.astype(dtype)[idx], meta)


def _run_config(run_dir: Path | None):
    if run_dir is None:
        return None
    from medtune.training.config import load_config

    return load_config(run_dir / RUN_CONFIG)


def _props_from_run(run_cfg) -> dict[str, Any] | None:
    """Dataset properties from the run's preprocessing cache, when it still exists."""
    if run_cfg is None or not run_cfg.data.cache:
        return None
    from medtune.data.preprocess import PROPS_FILE, read_props

    cache = Path(run_cfg.data.cache)
    return read_props(cache) if (cache / PROPS_FILE).is_file() else None


def _build_model(adapter_dir: Path, config: dict[str, Any], seed: int) -> torch.nn.Module:
    from medtune.artifacts.adapters import load_adapter

    whole = bool(config.get("whole_model"))
    backbone = (config.get("model") or {}).get("backbone") or {}
    try:
        with _seeded(seed):
            return load_adapter(adapter_dir, load_backbone_weights=not whole)
    except MedtuneInputError as exc:
        if "backbone weights differ" in str(exc) and not backbone.get("pretrained"):
            raise MedtuneInputError(
                f"{adapter_dir}: the adapter's backbone was randomly initialised (pretrained: "
                f"false) and rebuilding it with seed {seed} gives other weights; expected the run "
                "directory (its config.yaml names the seed) or an adapter whose extra has 'seed'"
            ) from exc
        raise


def load_predictor(
    path: str | Path, device: str | None = "cpu", sw_batch_size: int | None = None
) -> Predictor:
    """Load the model of a run directory or an adapter folder onto `device` (see module doc).

    `sw_batch_size` (windows per model call) defaults to the adapter's `extra["sw_batch_size"]`,
    else the run's `train.sw_batch_size`, else 1; more windows per call are faster on a CPU.
    """
    from medtune.artifacts.adapters import read_adapter_config

    adapter_dir, run_dir = resolve_model_dir(path)
    config = read_adapter_config(adapter_dir)
    extra = config.get("extra") or {}
    run_cfg = _run_config(run_dir)
    dev = resolve_device(device)

    props = extra.get("dataset") or _props_from_run(run_cfg)
    if not props:
        raise MedtuneInputError(
            f"{adapter_dir / 'adapter_config.json'}: expected dataset properties in extra['dataset'] "
            "(written by medtune train), found none and no run cache to read them from"
        )
    window = extra.get("crop_size") or (run_cfg.data.crop_size if run_cfg else None)
    if not window:
        raise MedtuneInputError(
            f"{adapter_dir / 'adapter_config.json'}: expected the training window in "
            "extra['crop_size'], found none"
        )
    overlap = extra.get("sw_overlap")
    if overlap is None:
        overlap = run_cfg.train.sw_overlap if run_cfg else DEFAULT_OVERLAP
    seed = int(run_cfg.train.seed) if run_cfg else int(extra.get("seed", 0))
    num_classes = int((config.get("model") or {}).get("num_classes", 0))
    if num_classes != len(props["labels"]):
        raise MedtuneInputError(
            f"{adapter_dir / 'adapter_config.json'}: the model has {num_classes} classes, its "
            f"dataset properties list {len(props['labels'])} labels {props['labels']}"
        )
    model = _build_model(adapter_dir, config, seed)
    model.eval()
    model.to(dev)
    return Predictor(
        model=model,
        props=dict(props),
        window=tuple(window),
        overlap=float(overlap),
        sw_batch_size=int(
            sw_batch_size
            or extra.get("sw_batch_size")
            or (run_cfg.train.sw_batch_size if run_cfg else 1)
        ),
        device=dev,
        source=str(adapter_dir),
        run_dir=run_dir,
        run_config=run_cfg,
    )
