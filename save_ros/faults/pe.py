"""The faulty processing element (PE) of an accelerator, as a software error model.

Semantics (exact). A Linear or Conv2d layer computes products w[j, i, k] * x[i, k'] of weights of
output channel j with inputs of input channel i, and accumulates them into output channel j. A
faulty PE that owns the pair (in_ch=i, out_ch=j) corrupts EVERY such product and nothing else:

- `PESite.PRODUCT`: each product p (in the layer's dtype) is replaced by corrupt(p), where corrupt
  flips `bit` (`PEMode.FLIP`) or forces it to 0/1 (`STUCK0`/`STUCK1`) through `core.bits`.
- `PESite.WEIGHT`: the PE's weight register is corrupt: each product becomes corrupt(w) * x.

The faulty output is y'[:, j] = y[:, j] + sum over those products of (p' - p), where y is the
layer's fault-free output; other output channels are untouched, and so is channel j's dependence
on every input channel other than i (the difference of sums is accumulated in the layer's dtype,
so it matches a faulty accumulation up to rounding). For Conv2d every kernel tap counts, including
taps on zero padding (an im2col accelerator multiplies those too); with groups, i must lie in the
group of j, as no PE ever pairs channels of different groups. Only zero padding is supported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from save_ros.core import bits
from save_ros.errors import UserError
from save_ros.faults.faultmodels import PEMode, PESite, ProcessingElementFault, _generator
from save_ros.faults.targets import EmptyTargetError, Target, select_modules


class UnsupportedLayerError(UserError, TypeError):
    """The PE model is defined for nn.Linear and nn.Conv2d only."""


@dataclass(frozen=True)
class PEFaultSpec:
    """One concrete faulty PE in one layer."""

    layer: str
    in_ch: int
    out_ch: int
    bit: int
    mode: PEMode
    site: PESite

    def to_dict(self) -> dict:
        """JSON-safe form."""
        d = asdict(self)
        d["mode"], d["site"] = self.mode.value, self.site.value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PEFaultSpec:
        """Inverse of `to_dict`."""
        return cls(d["layer"], int(d["in_ch"]), int(d["out_ch"]), int(d["bit"]), PEMode(d["mode"]),
                   PESite(d["site"]))


def _channels(module: nn.Module) -> tuple[int, int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, 1
    if isinstance(module, nn.Conv2d):
        return module.in_channels, module.out_channels, module.groups
    raise UnsupportedLayerError(
        f"processing-element faults model nn.Linear and nn.Conv2d, not {type(module).__name__}; "
        "select those layers with Target(types=(nn.Linear, nn.Conv2d))"
    )


def _check_pair(path: str, module: nn.Module, i: int, j: int) -> None:
    c_in, c_out, groups = _channels(module)
    if not (0 <= i < c_in and 0 <= j < c_out):
        raise ValueError(f"PE ({i}, {j}) is outside layer {path!r} ({c_in} in, {c_out} out)")
    if i // (c_in // groups) != j // (c_out // groups):
        raise ValueError(f"in_ch {i} and out_ch {j} lie in different groups of {path!r}: "
                         "no product pairs them")


def sample_pe_faults(model: nn.Module, fault: ProcessingElementFault,
                     target: Target = Target(types=(nn.Linear, nn.Conv2d)),
                     seed: int | torch.Generator = 0) -> list[PEFaultSpec]:
    """One faulty PE per selected Linear/Conv2d layer; channels drawn where the model says None."""
    gen = _generator(seed)
    modules = {p: m for p, m in select_modules(model, target).items()
               if isinstance(m, (nn.Linear, nn.Conv2d))}
    if not modules:
        raise EmptyTargetError("the target selects no nn.Linear or nn.Conv2d layer")
    out = []
    for path, m in modules.items():
        c_in, c_out, groups = _channels(m)
        j = fault.out_ch
        if j is None:
            j = int(torch.randint(0, c_out, (1,), generator=gen))
        i = fault.in_ch
        if i is None:
            per = c_in // groups
            i = (j // (c_out // groups)) * per + int(torch.randint(0, per, (1,), generator=gen))
        _check_pair(path, m, i, j)
        out.append(PEFaultSpec(path, i, j, fault.bit, fault.mode, fault.site))
    return out


def _corrupt(values: torch.Tensor, spec: PEFaultSpec) -> torch.Tensor:
    if spec.mode is PEMode.FLIP:
        return bits.flipped(values, spec.bit)
    out = values.contiguous().clone()
    bits.set_bit_(out, torch.arange(out.numel()), spec.bit, 1 if spec.mode is PEMode.STUCK1 else 0)
    return out


def _products(module: nn.Module, x: torch.Tensor, spec: PEFaultSpec):
    """Return (products, corrupted products, reduce-to-channel-j function)."""
    i, j = spec.in_ch, spec.out_ch
    if isinstance(module, nn.Linear):
        w = module.weight[j, i]
        xi = x[..., i]
        w_c = _corrupt(w.reshape(1), spec)[0] if spec.site is PESite.WEIGHT else None
        p = xi * w
        p_c = xi * w_c if w_c is not None else _corrupt(p, spec)
        return p, p_c, lambda d: d
    if x.dim() != 4:
        raise UnsupportedLayerError(f"PE faults on Conv2d need a batched (N, C, H, W) input, "
                                    f"got shape {tuple(x.shape)}")
    if module.padding_mode != "zeros":
        raise UnsupportedLayerError(f"PE faults need zero padding, not {module.padding_mode!r}")
    if isinstance(module.padding, str):
        raise UnsupportedLayerError("PE faults need numeric Conv2d padding, not "
                                    f"{module.padding!r}")
    c_in, _, groups = _channels(module)
    w = module.weight[j, i - (j // (module.out_channels // groups)) * (c_in // groups)]
    cols = F.unfold(x[:, i:i + 1], module.kernel_size, module.dilation, module.padding,
                    module.stride)  # (B, kh*kw, L): the inputs each tap multiplies
    wv = w.reshape(1, -1, 1)
    p = cols * wv
    p_c = cols * _corrupt(wv, spec) if spec.site is PESite.WEIGHT else _corrupt(p, spec)
    return p, p_c, lambda d: d.sum(1)


class PEFaults:
    """Forward hooks that apply faulty PEs to their layers; a context manager."""

    def __init__(self, model: nn.Module, specs: Sequence[PEFaultSpec]):
        self.model = model
        self.specs = list(specs)
        modules = dict(model.named_modules())
        for s in self.specs:
            if s.layer not in modules:
                raise KeyError(f"PE fault names layer {s.layer!r}, which the model lacks")
            _check_pair(s.layer, modules[s.layer], s.in_ch, s.out_ch)
        self._modules = modules
        self._handles: list = []

    def _hook(self, spec: PEFaultSpec):
        def hook(module, inputs, output):
            x = inputs[0]
            p, p_c, reduce = _products(module, x, spec)
            delta = reduce(p_c - p)
            out = output.clone()
            if isinstance(module, nn.Linear):
                out[..., spec.out_ch] += delta
            else:
                out[:, spec.out_ch] += delta.reshape(out[:, spec.out_ch].shape)
            return out
        return hook

    def __enter__(self) -> PEFaults:
        for s in self.specs:
            self._handles.append(self._modules[s.layer].register_forward_hook(self._hook(s)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
