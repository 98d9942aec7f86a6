"""medtune: parameter-efficient tuning of 2D natural-image backbones for 3D medical segmentation.

The Python API is this package's top level (module paths behind it may move):

    from medtune import load_config, build_model, count_parameters
    cfg = load_config("configs/brats/swin_t_unet/med_adapter.yaml", {"model.backbone.pretrained": False})
    model = build_model(cfg.model)          # (B, 4, D, 128, 128) -> logits (B, 4, D, 128, 128)
    print(count_parameters(model))          # total / tuned / inserted

Names are imported on first use, so `import medtune` (and the command line's argument
checks) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "load_config": "medtune.training.config",
    "ExperimentConfig": "medtune.training.config",
    "build_model": "medtune.modeling.model",
    "ModelConfig": "medtune.modeling.model",
    "SegModel": "medtune.modeling.model",
    "count_parameters": "medtune.modeling.params",
    "list_backbones": "medtune.modeling.backbones",
    "list_methods": "medtune.modeling.methods",
    "list_decoders": "medtune.modeling.decoders",
    "save_adapter": "medtune.artifacts.adapters",
    "load_adapter": "medtune.artifacts.adapters",
    "MultiTaskModel": "medtune.artifacts.multitask",
    "train_run": "medtune.training.run",
    "load_predictor": "medtune.inference.predictor",
    "predict_files": "medtune.inference.predict",
    "predict_volume": "medtune.inference.sliding_window",
    "evaluate_run": "medtune.evaluation.evaluate",
    "compute_case_metrics": "medtune.evaluation.metrics",
    "MedtuneInputError": "medtune.core.errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medtune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
