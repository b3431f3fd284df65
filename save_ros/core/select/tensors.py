"""One `TensorAnalysis` per weight and per activation: its checked range and its bits' classes.

A weight is checked against its own golden per-output-channel min / max; an activation against
its sound range when that is sound, finite and at most `looseness_limit` times as wide as the
calibration range, else the calibration range. Every single-bit flip is then classed robust,
ranging or vulnerable (`attribution.bit_shares`) under a `FlipRule` built from that range and
the element's sensitivity (floored per channel and tensor). Large tensors are attributed on a
seeded sample of elements (`TensorAnalysis.sampled`). Pure view / shape ops alias their input's
memory and get no entry of their own (`is_view`).
"""

from __future__ import annotations

import torch
from torch import nn

from save_ros.core import bits
from save_ros.core.analysis import RangeSource, TensorAnalysis, TensorKind
from save_ros.core.graph import ModelGraph
from save_ros.core.select.attribution import FlipRule, bit_shares
from save_ros.core.select.config import SelectConfig
from save_ros.core.select.ranges import NodeRange, looseness

VIEW_KINDS = {
    "view", "reshape", "flatten", "Flatten", "permute", "transpose", "contiguous", "unsqueeze",
    "squeeze", "expand", "expand_as", "getitem", "chunk", "split", "Dropout", "dropout",
    "Identity", "t", "unflatten", "Unflatten", "detach", "to", "float", "size", "getattr",
    "view_as", "reshape_as", "unbind", "type_as", "clone",
}
RELU_KINDS = {"ReLU", "relu"}


def _floored(r: torch.Tensor, cdim: int | None, cfg: SelectConfig
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """R with the channel and tensor floors applied, and where a floor raised it (flat path)."""
    out = r.clone()
    if cdim is not None and r.dim() > 0 and cfg.channel_floor > 0:
        dims = [d for d in range(r.dim()) if d != cdim]
        ch = r.amax(dim=dims, keepdim=True) if dims else r
        out = torch.maximum(out, ch * cfg.channel_floor)
    if r.numel() and cfg.tensor_floor > 0:
        out = torch.maximum(out, r.max() * cfg.tensor_floor)
    return out, out > r


def is_view(layer, graph: ModelGraph, ranges: dict[str, NodeRange]) -> bool:
    """A shape op that aliases its input; getitem of a computed tuple (MHA) is a real tensor."""
    if layer.kind == "getitem" and layer.inputs and layer.inputs[0] not in ranges:
        try:
            return graph.layer(layer.inputs[0]).kind in VIEW_KINDS  # chunk / split: views
        except KeyError:
            return True
    return layer.kind in VIEW_KINDS


def _fill(t: TensorAnalysis, shares: list[tuple[float, float, float]]) -> None:
    """Totals and score from per-bit shares."""
    t.bit_shares = shares
    t.robust_bits = sum(s[0] for s in shares) * t.numel
    t.ranging_bits = sum(s[1] for s in shares) * t.numel
    t.vulnerable_bits = sum(s[2] for s in shares) * t.numel
    t.score = t.vulnerable_bits / t.nbytes if t.nbytes else 0.0


def _sample_positions(numel: int, cap: int, seed: int, device) -> torch.Tensor | None:
    """None (all) when numel <= cap, else `cap` seeded distinct positions (sorted)."""
    if numel <= cap:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(numel, generator=g)[:cap].sort().values.to(device)


def _at(t: torch.Tensor | None, shape: tuple[int, ...], pos: torch.Tensor) -> torch.Tensor | None:
    """A per-element tensor broadcast to `shape`, flattened, at flat positions `pos`."""
    if t is None:
        return None
    return t.expand(shape).reshape(-1)[pos]


def weight_entry(name: str, w: torch.Tensor, layer: str, sens: torch.Tensor | None,
                  cfg: SelectConfig, seed: int = 0) -> tuple[TensorAnalysis, FlipRule]:
    """Attribution of one weight against its golden per-output-channel range."""
    w = w.detach().float()
    if w.dim() == 0:
        w = w.reshape(1)
    # Per output channel for matrices and kernels; a vector (bias, norm parameters) gets one
    # range for the whole tensor: per element it would be a full golden comparison, not a range.
    rows = w.reshape(w.shape[0], -1) if w.dim() > 1 else w.reshape(1, -1)
    lo_ch, hi_ch = rows.amin(1), rows.amax(1)
    shape = (-1,) + (1,) * (w.dim() - 1) if w.dim() > 1 else (1,)
    r, flat = _floored(sens.reshape(w.shape), 0 if w.dim() > 1 else None, cfg) \
        if sens is not None else (None, None)
    rule = FlipRule(lo_ch.reshape(shape), hi_ch.reshape(shape), r, cfg.fraction, flat=flat)
    lo, hi = float(lo_ch.min()), float(hi_ch.max())
    t = TensorAnalysis(
        name=name, kind=TensorKind.WEIGHT, layer=layer, dtype="float32",
        shape=list(w.shape), numel=w.numel(), sound_low=lo, sound_high=hi, calib_low=lo,
        calib_high=hi, check=RangeSource.SOUND, channel_dim=0 if w.dim() > 1 else None,
        sound_low_ch=lo_ch.tolist() if w.dim() > 1 else None,
        sound_high_ch=hi_ch.tolist() if w.dim() > 1 else None, nbytes=w.numel() * w.element_size(),
    )
    pos = _sample_positions(w.numel(), cfg.weight_elements, seed, w.device)
    if pos is None:
        _fill(t, bit_shares(w, rule))
    else:
        sub = rule.at(lambda t: _at(t, w.shape, pos))
        _fill(t, bit_shares(w.reshape(-1)[pos], sub))
        t.sampled = len(pos)
    return t, rule


def pool_kernel(graph: ModelGraph, layer) -> int | None:
    """k if every consumer is an nn.MaxPool2d with a k x k window, stride k, no padding."""
    ks = set()
    for u in layer.users:
        user = graph.layer(u)
        if user.op != "call_module":
            return None
        m = graph.model.get_submodule(user.target)
        if not isinstance(m, nn.MaxPool2d) or m.ceil_mode or m.return_indices:
            return None
        k = nn.modules.utils._pair(m.kernel_size)
        if k[0] != k[1] or nn.modules.utils._pair(m.stride) != k \
                or nn.modules.utils._pair(m.padding) != (0, 0) \
                or nn.modules.utils._pair(m.dilation) != (1, 1):
            return None
        ks.add(k[0])
    return ks.pop() if len(ks) == 1 else None


def activation_entry(r: NodeRange, layer: str, sens: torch.Tensor | None, relu: bool,
                      cfg: SelectConfig, pool: int | None = None
                      ) -> tuple[TensorAnalysis, FlipRule]:
    """Attribution of one activation over its kept calibration values."""
    loose = looseness(r)
    finite = bool(torch.isfinite(r.sound.lo).all() and torch.isfinite(r.sound.hi).all())
    check = RangeSource.SOUND if r.is_sound and finite and loose <= cfg.looseness_limit else \
        RangeSource.CALIBRATION
    cdim = r.channel_dim
    if cdim is not None:
        lo_ch, hi_ch = (r.sound_lo_ch, r.sound_hi_ch) if check is RangeSource.SOUND else \
            (r.calib_lo_ch, r.calib_hi_ch)
        shape = [1] * (len(r.shape) + 1)
        shape[cdim] = -1
        low, high = lo_ch.reshape(shape), hi_ch.reshape(shape)
    else:
        w = r.calib_hi - r.calib_lo
        src = r.sound if check is RangeSource.SOUND else None
        low = src.lo if src else torch.maximum(r.calib_lo - cfg.margin * w, r.sound.lo)
        high = src.hi if src else torch.minimum(r.calib_hi + cfg.margin * w, r.sound.hi)
        low, high = low.amin().reshape(1), high.amax().reshape(1)
    rs = flat = None
    if sens is not None:
        rs, flat = _floored(sens.unsqueeze(0), cdim, cfg)
    if pool is not None and len(r.shape) != 3:
        pool = None
    rule = FlipRule(low, high, rs, cfg.fraction, relu, pool, flat)
    numel = int(torch.tensor(r.shape).prod()) if r.shape else 1
    cw = r.calib_hi - r.calib_lo
    t = TensorAnalysis(
        name=r.name, kind=TensorKind.ACTIVATION, layer=layer, dtype="float32",
        shape=list(r.shape), numel=numel,
        sound_low=float(r.sound.lo.min()), sound_high=float(r.sound.hi.max()),
        calib_low=float(torch.maximum(r.calib_lo - cfg.margin * cw, r.sound.lo).min()),
        calib_high=float(torch.minimum(r.calib_hi + cfg.margin * cw, r.sound.hi).max()),
        check=check, channel_dim=cdim, looseness=loose,
        sound_low_ch=r.sound_lo_ch.tolist() if r.sound_lo_ch is not None else None,
        sound_high_ch=r.sound_hi_ch.tolist() if r.sound_hi_ch is not None else None,
        calib_low_ch=r.calib_lo_ch.tolist() if r.calib_lo_ch is not None else None,
        calib_high_ch=r.calib_hi_ch.tolist() if r.calib_hi_ch is not None else None,
        nbytes=numel * 4,
        masked_by="relu" if relu else (f"maxpool{pool}" if pool else None),
        sound=r.is_sound,
    )
    values = r.samples
    if r.positions is None:
        values = values.reshape(len(values), *r.shape)
        other = r.other_max.reshape(values.shape) if r.other_max is not None else None
        _fill(t, bit_shares(values.contiguous(), rule, other_max=other))
    else:
        one = (1, *r.shape)
        sub = rule.at(lambda t: _at(t, one, r.positions))
        sub.pool_kernel = None
        _fill(t, bit_shares(values.contiguous(), sub, other_max=r.other_max))
        t.sampled = int(values.numel())
    return t, rule


def weights_of(model: nn.Module, graph: ModelGraph) -> dict[str, tuple[torch.Tensor, str]]:
    """Float parameters and buffers with a bit layout, and the first layer that reads each."""
    readers: dict[str, str] = {}
    for layer in graph.layers:
        for p in layer.params:
            readers.setdefault(p, layer.name)
    out = {}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.dtype in bits.LAYOUTS and t.is_floating_point():
            out[name] = (t, readers.get(name, ""))
    return out
