"""The tuning-method interface (peft-style): insert modules, choose what trains, save only that.

A method is a folder `medtune/methods/<name>/` holding its config dataclass and its layers, and
one `@METHODS.register("<name>")` line on its `TuningMethod` subclass. `apply(model)`:

1. checks the backbone offers what the method `requires` (`Backbone.capabilities`; a clear
   error says why not);
2. `insert(model)` adds the method's modules (adapters after blocks, prompts, LoRA layers...);
   every parameter that did not exist before is recorded as *inserted*;
3. sets `requires_grad`: by default the inserted parameters, the decoder, and the encoder-side
   extras the paper tunes (`backbone.tuned_extra_names()`) train, everything else is frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import nn

from medtune.core.configbase import from_dict, to_dict
from medtune.core.errors import MedtuneInputError
from medtune.core.registry import Registry

Activation = Literal["gelu", "relu", "silu", "none"]
"""Names of the non-linearities inside inserted modules (`adapter.layer.make_act`)."""


@dataclass
class MethodConfig:
    """Base config of a tuning method (methods subclass it with their own fields)."""


class TuningMethod:
    """Base class of tuning methods; see the module docstring for the protocol."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type] = MethodConfig
    requires: ClassVar[frozenset[str]] = frozenset()
    """Backbone capabilities the method needs (`medtune.modeling.backbones.base.CAPABILITIES`);
    every family has post-block hooks, so methods that use only those require nothing; methods
    built for 2D backbones run over slices require `slices` (native 3D families refuse them)."""
    requires_any: ClassVar[frozenset[str]] = frozenset()
    """Capabilities of which the backbone must offer at least one (when not empty)."""
    wrapper_segments: ClassVar[tuple[str, ...]] = ()
    """Path segments the method's wrappers insert between a frozen module and its parent
    (e.g. peft's `base_layer`); removing them gives the tensor names the backbone had before."""
    uses_pretrained: ClassVar[bool] = True
    """False for training from scratch: no weights are loaded."""
    unsupported_reason: ClassVar[str] = ""
    """Why the method needs what it `requires` (said when a backbone lacks it)."""

    def __init__(self, config: Any):
        self.config = config

    # --- protocol ------------------------------------------------------------------------
    @classmethod
    def supports(cls, have: frozenset[str]) -> bool:
        """True when a backbone offering the capabilities `have` can take this method."""
        return cls.requires <= have and (not cls.requires_any or bool(cls.requires_any & have))

    def check_supported(self, backbone: nn.Module) -> None:
        """Raise a clear error when the backbone lacks a capability the method requires."""
        have = backbone.offers()
        if "slices" in self.requires and "slices" not in have:
            fits = [n for n in METHODS.names() if METHODS.get(n).supports(have)]
            raise MedtuneInputError(
                f"method '{self.name}' does not support {backbone.family} backbones: it works on "
                f"2D backbones run over the slices of a volume, and {backbone.name} is a native 3D "
                f"backbone; methods for it: {', '.join(fits)}"
            )
        missing = sorted(self.requires - have)
        if not missing and self.requires_any and not self.requires_any & have:
            missing = [" or ".join(sorted(self.requires_any))]
        if missing:
            why = f": {self.unsupported_reason}" if self.unsupported_reason else ""
            notes = getattr(backbone, "capability_notes", {})
            lacking = sorted((self.requires | self.requires_any) - have)
            why += "".join(f"; {backbone.name}: {notes[c]}" for c in lacking if c in notes)
            raise MedtuneInputError(
                f"method '{self.name}' does not support {backbone.family} backbones "
                f"({backbone.name} has no {', '.join(missing)}){why}"
            )

    def insert(self, model: nn.Module) -> None:
        """Add the method's modules to `model` (default: none)."""

    def trainable_names(self, model: nn.Module) -> set[str]:
        """Parameter names to train: decoder, encoder-side extras, inserted parameters."""
        names = {n for n, _ in model.named_parameters() if n.startswith("decoder.")}
        names |= {f"backbone.{n}" for n in model.backbone.tuned_extra_names()}
        names |= set(model.inserted_names)
        return names

    def apply(self, model: nn.Module) -> nn.Module:
        """Insert the method into `model` and set what trains; returns `model`."""
        self.check_supported(model.backbone)
        before = {id(p) for p in model.parameters()}
        self.insert(model)
        model.inserted_names = [n for n, p in model.named_parameters() if id(p) not in before]
        trainable = self.trainable_names(model)
        for n, p in model.named_parameters():
            p.requires_grad_(n in trainable)
        model.method = self
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        """Fold inserted weights into the backbone for deployment, where the method can."""
        return model

    def to_dict(self) -> dict[str, Any]:
        """`{"name": ..., **config}` as written to YAML / adapter_config.json."""
        return {"name": self.name, **to_dict(self.config)}


METHODS: Registry[type[TuningMethod]] = Registry("tuning method")


def register_method(name: str):
    """Class decorator: register a `TuningMethod` subclass under `name`."""

    def deco(cls: type[TuningMethod]) -> type[TuningMethod]:
        cls.name = name
        METHODS.register(name)(cls)
        return cls

    return deco


def list_methods() -> list[str]:
    """Registered method names."""
    return METHODS.names()


def create_method(spec: dict[str, Any] | str) -> TuningMethod:
    """Build a method from `{"name": ..., **options}` (or a bare name)."""
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    name = spec.pop("name", None)
    if not name:
        raise MedtuneInputError(f"model.method: expected a mapping with a 'name', found {spec!r}")
    cls = METHODS.get(name)
    config = from_dict(cls.config_cls, spec, "model.method")
    return cls(config)
