"""SAVE Selection: value ranges and bit attribution of every weight and activation -> Analysis.

`analyze(model, example_input, input_range, calibration=None)` captures the graph, propagates
the input box (sound ranges), runs the calibration inputs (observed ranges, widened by `margin`),
bounds the first-order sensitivity of every top-1 gap to each element (`core.sensitivity`) and
classifies every single-bit flip of every element (`core.attribution`).

Which range the runtime checks: the sound range when it is finite and at most
`looseness_limit` times as wide as the calibration range (mean over channels), else the
calibration range. Weights are checked against their own golden per-output-channel min / max.

Activations are the outputs of computing layers; pure view / shape ops (reshape, permute,
getitem, flatten, dropout in eval, ...) alias their input's memory and are not counted again.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from save_ros.core import bits
from save_ros.core.analysis import (
    Analysis,
    RangeSource,
    TensorAnalysis,
    TensorKind,
    analysis_key,
)
from save_ros.core.attribution import FlipRule, bit_shares
from save_ros.core.graph import ModelGraph, capture
from save_ros.core.ranges import NodeRange, looseness, node_ranges
from save_ros.core.sensitivity import margin_sensitivity, top1_gaps

VIEW_KINDS = {
    "view", "reshape", "flatten", "Flatten", "permute", "transpose", "contiguous", "unsqueeze",
    "squeeze", "expand", "expand_as", "getitem", "chunk", "split", "Dropout", "dropout",
    "Identity", "t", "unflatten", "Unflatten", "detach", "to", "float", "size", "getattr",
    "view_as", "reshape_as", "unbind", "type_as", "clone",
}
RELU_KINDS = {"ReLU", "relu"}


@dataclass
class SelectConfig:
    """Settings of the analysis; all of them go into the analysis key."""

    margin: float = 0.1  # calibration ranges widened by this share of their width on each side
    # Numerically robust: |delta| * R <= fraction, i.e. the flip moves every top-1 gap of every
    # calibration input by at most this fraction of the gap, to first order. 0.5 leaves half
    # the gap for curvature; chosen on test[256:512], validated on test[:256] (results doc).
    fraction: float = 0.5
    channel_floor: float = 0.0  # R of an element >= this x the max R of its channel
    tensor_floor: float = 0.01  # ... and >= this x the max R of its tensor (zero gradients)
    # Calibration inputs with a top-1 gap below this quantile of the gaps are left out of the
    # sensitivity bound: the robust claim then covers inputs whose gap is at least that large.
    gap_quantile: float = 0.0
    looseness_limit: float = 4.0  # check the sound range only when at most this much looser
    calib_keep: int = 64  # calibration samples whose activations are attributed bit by bit
    sens_samples: int = 256  # calibration samples for the sensitivity bound


def _floored(r: torch.Tensor, cdim: int | None, cfg: SelectConfig) -> torch.Tensor:
    """R with the channel and tensor floors applied (guards elements with zero gradient)."""
    out = r.clone()
    if cdim is not None and r.dim() > 0 and cfg.channel_floor > 0:
        dims = [d for d in range(r.dim()) if d != cdim]
        ch = r.amax(dim=dims, keepdim=True) if dims else r
        out = torch.maximum(out, ch * cfg.channel_floor)
    if r.numel() and cfg.tensor_floor > 0:
        out = torch.maximum(out, r.max() * cfg.tensor_floor)
    return out


def _is_view(layer, graph: ModelGraph, ranges: dict[str, NodeRange]) -> bool:
    """A shape op that aliases its input; getitem of a computed tuple (MHA) is a real tensor."""
    if layer.kind == "getitem" and layer.inputs and layer.inputs[0] not in ranges:
        try:
            return graph.layer(layer.inputs[0]).kind in VIEW_KINDS  # chunk / split: views
        except KeyError:
            return True
    return layer.kind in VIEW_KINDS


def _covered_samples(model: nn.Module, calib: torch.Tensor, cfg: SelectConfig) -> torch.Tensor:
    """Calibration samples the robust claim covers: top-1 gap at or above the gap quantile."""
    if cfg.gap_quantile > 0:
        with torch.no_grad():
            top, gaps = top1_gaps(model(calib))
        gaps[torch.arange(len(gaps)), top] = float("inf")
        g = gaps.amin(1)
        calib = calib[g >= torch.quantile(g, cfg.gap_quantile)]
    return calib[: cfg.sens_samples]


def _fill(t: TensorAnalysis, shares: list[tuple[float, float, float]]) -> None:
    """Totals and score from per-bit shares."""
    t.bit_shares = shares
    t.robust_bits = sum(s[0] for s in shares) * t.numel
    t.ranging_bits = sum(s[1] for s in shares) * t.numel
    t.vulnerable_bits = sum(s[2] for s in shares) * t.numel
    t.score = t.vulnerable_bits / t.nbytes if t.nbytes else 0.0


def _weight_entry(name: str, w: torch.Tensor, layer: str, sens: torch.Tensor | None,
                  cfg: SelectConfig) -> tuple[TensorAnalysis, FlipRule]:
    """Attribution of one weight against its golden per-output-channel range."""
    w = w.detach()
    if w.dim() == 0:
        w = w.reshape(1)
    # Per output channel for matrices and kernels; a vector (bias, norm parameters) gets one
    # range for the whole tensor: per element it would be a full golden comparison, not a range.
    rows = w.reshape(w.shape[0], -1) if w.dim() > 1 else w.reshape(1, -1)
    lo_ch, hi_ch = rows.amin(1), rows.amax(1)
    shape = (-1,) + (1,) * (w.dim() - 1) if w.dim() > 1 else (1,)
    r = _floored(sens.reshape(w.shape), 0 if w.dim() > 1 else None, cfg) \
        if sens is not None else None
    rule = FlipRule(lo_ch.reshape(shape), hi_ch.reshape(shape), r, cfg.fraction)
    lo, hi = float(lo_ch.min()), float(hi_ch.max())
    t = TensorAnalysis(
        name=name, kind=TensorKind.WEIGHT, layer=layer, dtype=str(w.dtype).removeprefix("torch."),
        shape=list(w.shape), numel=w.numel(), sound_low=lo, sound_high=hi, calib_low=lo,
        calib_high=hi, check=RangeSource.SOUND, channel_dim=0 if w.dim() > 1 else None,
        sound_low_ch=lo_ch.tolist() if w.dim() > 1 else None,
        sound_high_ch=hi_ch.tolist() if w.dim() > 1 else None, nbytes=w.numel() * w.element_size(),
    )
    _fill(t, bit_shares(w, rule))
    return t, rule


def _pool_kernel(graph: ModelGraph, layer) -> int | None:
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


def _activation_entry(r: NodeRange, layer: str, sens: torch.Tensor | None, relu: bool,
                      cfg: SelectConfig, pool: int | None = None
                      ) -> tuple[TensorAnalysis, FlipRule]:
    """Attribution of one activation over its kept calibration values."""
    loose = looseness(r)
    finite = bool(torch.isfinite(r.sound.lo).all() and torch.isfinite(r.sound.hi).all())
    check = RangeSource.SOUND if finite and loose <= cfg.looseness_limit else \
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
    rs = None
    if sens is not None:
        rs = _floored(sens.unsqueeze(0), cdim, cfg)
    if pool is not None and len(r.shape) != 3:
        pool = None
    rule = FlipRule(low, high, rs, cfg.fraction, relu, pool)
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
    )
    _fill(t, bit_shares(r.samples.contiguous(), rule))
    return t, rule


def _weights(model: nn.Module, graph: ModelGraph) -> dict[str, tuple[torch.Tensor, str]]:
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


def _range_record(input_range) -> dict:
    """The input box as plain data for the key and the report."""
    lo, hi = input_range
    as_list = [torch.as_tensor(b, dtype=torch.float32).tolist() for b in (lo, hi)]
    return {"low": as_list[0], "high": as_list[1]}


def key_for(model: nn.Module, example_input: torch.Tensor, input_range,
            config: SelectConfig | None = None) -> str:
    """The key `analyze` would give: compare with a saved Analysis before re-running it."""
    graph = capture(model.eval(), example_input[:1])
    return analysis_key(model, graph.architecture(), _range_record(input_range),
                        asdict(config or SelectConfig()))


def analyze(
    model: nn.Module,
    example_input: torch.Tensor,
    input_range,
    calibration: torch.Tensor | None = None,
    margin: float = 0.1,
    config: SelectConfig | None = None,
) -> Analysis:
    """Run SAVE Selection on `model` (eval mode, fp32) for inputs inside `input_range`."""
    cfg = config or SelectConfig(margin=margin)
    cfg.margin = margin if config is None else cfg.margin
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model.eval()
    graph = capture(model, example_input[:1])
    box = _range_record(input_range)
    key = analysis_key(model, graph.architecture(), box, asdict(cfg))
    timings["capture"] = time.perf_counter() - t0
    calib = calibration if calibration is not None else example_input
    weights = _weights(model, graph)
    if graph.capture != "fx":
        return _hooks_analysis(model, graph, key, box, cfg, weights, timings)

    t = time.perf_counter()
    ranges, unsupported = node_ranges(graph, example_input[:1], input_range, calib, cfg.margin,
                                      cfg.calib_keep)
    timings["ranges"] = time.perf_counter() - t
    acts = [layer for layer in graph.layers
            if layer.name in ranges and not _is_view(layer, graph, ranges)
            and ranges[layer.name].batch_dim == 0 and ranges[layer.name].samples is not None]

    t = time.perf_counter()
    with torch.no_grad():
        out = model(calib[:1])
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] >= 2:
        sens_in = _covered_samples(model, calib, cfg)
        r_w, r_a, gaps = margin_sensitivity(graph, sens_in, list(weights),
                                            [a.name for a in acts])
    else:  # no top-1 to protect: only exact masking makes a flip robust
        sens_in, r_w, r_a, gaps = calib[:0], {}, {}, torch.empty(0)
        unsupported = [*unsupported, "(numerical robustness): the output is not (N, classes) "
                       "logits, so no flip is classed robust by the gap rule"]
    timings["sensitivity"] = time.perf_counter() - t

    t = time.perf_counter()
    tensors: dict[str, TensorAnalysis] = {}
    rules: dict[str, FlipRule] = {}
    for name, (w, layer) in weights.items():
        tensors[name], rules[name] = _weight_entry(name, w, layer, r_w.get(name), cfg)
    for layer in acts:
        relu = bool(layer.users) and all(
            graph.layer(u).kind in RELU_KINDS for u in layer.users)
        tensors[layer.name], rules[layer.name] = _activation_entry(
            ranges[layer.name], layer.name, r_a.get(layer.name), relu, cfg,
            _pool_kernel(graph, layer))
    timings["attribution"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    settings = asdict(cfg) | {"calibration_samples": len(calib),
                              "sens_samples": len(sens_in),
                              "min_gap": float(gaps.min()) if len(gaps) else None}
    analysis = Analysis(key=key, capture=graph.capture,
                        layers=[asdict(layer) for layer in graph.layers], tensors=tensors,
                        unsupported=unsupported, input_range=box, settings=settings,
                        timings=timings)
    analysis.rules = rules
    analysis.graph = graph
    return analysis


def _hooks_analysis(model, graph, key, box, cfg, weights, timings) -> Analysis:
    """Without fx: weights against their golden ranges, nothing numerically robust."""
    tensors, rules = {}, {}
    for name, (w, layer) in weights.items():
        tensors[name], rules[name] = _weight_entry(name, w, layer, None, cfg)
    analysis = Analysis(key=key, capture=graph.capture,
                        layers=[asdict(layer) for layer in graph.layers], tensors=tensors,
                        unsupported=["(whole model): torch.fx could not trace it; activations "
                                     "are not analysed and no flip is classed robust"],
                        input_range=box, settings=asdict(cfg), timings=timings)
    analysis.rules = rules
    analysis.graph = graph
    return analysis
