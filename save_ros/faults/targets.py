"""Which tensors a fault may hit: layers by name (glob) or module type, minus an exclude set."""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from save_ros.core import bits


class TargetKind(enum.Enum):
    """Weights (persistent until undone) or activations (transient, one forward pass)."""

    WEIGHTS = "weights"
    ACTIVATIONS = "activations"


class EmptyTargetError(ValueError):
    """A target selected nothing that a fault could hit."""


@dataclass(frozen=True)
class Site:
    """One tensor a fault may hit: its name, element count and dtype."""

    name: str
    numel: int
    dtype: torch.dtype

    @property
    def width(self) -> int:
        """Bits per element."""
        return bits.layout_of(self.dtype).width


@dataclass(frozen=True)
class Target:
    """A selection of layers and tensors.

    `layers`: glob patterns on module paths (`conv1`, `layer1.*`; `*` = all); `types`: module
    classes (an empty tuple = any); a tensor is selected when its owning module matches both.
    `tensors`: glob patterns on tensor names (`*.weight` leaves biases alone). `exclude`: tensor
    names or globs never touched (SAVE's reliable-memory pool). `buffers`: include buffers such as
    BatchNorm running stats (only those with a bit layout: `num_batches_tracked` is int64).
    """

    kind: TargetKind = TargetKind.WEIGHTS
    layers: tuple[str, ...] = ("*",)
    types: tuple[type, ...] = ()
    tensors: tuple[str, ...] = ("*",)
    exclude: frozenset[str] = frozenset()
    buffers: bool = False

    def __post_init__(self) -> None:
        # Accept a bare string or list where a tuple is meant, a common slip.
        for name in ("layers", "tensors"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        object.__setattr__(self, "types", tuple(self.types))
        object.__setattr__(self, "exclude", frozenset(self.exclude))
        object.__setattr__(self, "kind", TargetKind(self.kind))

    def matches_module(self, path: str, module: nn.Module | None) -> bool:
        """True when the module at `path` is selected by `layers` and `types`."""
        if not any(fnmatch.fnmatchcase(path, p) for p in self.layers):
            return False
        return not self.types or (module is not None and isinstance(module, self.types))

    def excluded(self, tensor_name: str) -> bool:
        """True when `tensor_name` is in the exclude set (exact name or glob)."""
        return tensor_name in self.exclude or any(
            fnmatch.fnmatchcase(tensor_name, p) for p in self.exclude
        )

    def to_dict(self) -> dict:
        """A JSON-safe description (module types by class name)."""
        return {"kind": self.kind.value, "layers": list(self.layers),
                "types": [t.__name__ for t in self.types], "tensors": list(self.tensors),
                "exclude": sorted(self.exclude), "buffers": self.buffers}


def _module_path(tensor_name: str) -> str:
    return tensor_name.rpartition(".")[0]


def select_weights(
    model: nn.Module | None,
    target: Target = Target(),
    tensors: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The selected weight tensors, name -> tensor (detached views of the live storage).

    `tensors` (e.g. a method's `injectable()`) replaces the model's parameters as the pool to
    choose from; `model` is then only used to resolve module types and may be None when the
    target names no types.
    """
    if tensors is None:
        if model is None:
            raise ValueError("select_weights needs a model or a tensor mapping")
        pool: dict[str, torch.Tensor] = dict(model.named_parameters())
        if target.buffers:
            pool.update((k, b) for k, b in model.named_buffers() if b.dtype in bits.LAYOUTS)
    else:
        pool = dict(tensors)
    if target.types and model is None:
        raise ValueError("a target with module types needs the model to resolve them")
    chosen: dict[str, torch.Tensor] = {}
    for name, t in pool.items():
        if target.excluded(name):
            continue
        if not any(fnmatch.fnmatchcase(name, p) for p in target.tensors):
            continue
        path = _module_path(name)
        module = None
        if model is not None:
            try:
                module = model.get_submodule(path)
            except AttributeError:
                module = None
        if not target.matches_module(path, module):
            continue
        bits.layout_of(t.dtype)  # raises UnsupportedDtypeError with the supported list
        if not t.is_contiguous():
            raise ValueError(f"tensor {name!r} is not contiguous; flat indices need contiguity")
        chosen[name] = t.detach()
    if not chosen:
        raise EmptyTargetError(
            f"target {target.to_dict()} selects no weight tensor; check the layer globs against "
            "the model's module names (model.named_modules()) and the exclude set"
        )
    return chosen


def weight_sites(tensors: Mapping[str, torch.Tensor]) -> list[Site]:
    """Sites of a name -> tensor mapping, in its order."""
    return [Site(n, t.numel(), t.dtype) for n, t in tensors.items()]


def select_modules(model: nn.Module, target: Target, leaves_only: bool = True) -> dict[str,
                                                                                     nn.Module]:
    """Modules selected by `layers` and `types` (leaf modules only unless asked otherwise)."""
    chosen = {}
    for path, module in model.named_modules():
        if not path or (leaves_only and next(module.children(), None) is not None):
            continue
        if target.matches_module(path, module):
            chosen[path] = module
    return chosen
