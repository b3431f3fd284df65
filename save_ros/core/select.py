"""SAVE Selection: value ranges and bit attribution of every weight and activation -> Analysis.

`analyze(model, example_input, input_range, calibration=None)` captures the graph, propagates
the input box (sound ranges), runs the calibration inputs (observed ranges, widened by `margin`),
bounds the first-order sensitivity of the model's answer to each element (`core.sensitivity`)
and classifies every single-bit flip of every element (`core.attribution`). It runs on the
model's own device, in fp32 (a model stored in fp16 / bf16 is analysed as an fp32 copy).

The answer a robust flip may not change (`SelectConfig.task`):
- "classification": the top-1 class (outputs (N, C) logits);
- "regression": every output, to within `tolerance` (absolute), by default `tolerance_share`
  (1 %) of that output's span over the calibration inputs;
- "auto" (default): classification for a 2-D (N, C >= 2) output, else regression. A model with
  several continuous outputs per sample (a continuous-action policy) must be declared.

Which range the runtime checks: the sound range when it is sound (every op on the way has an
interval rule), finite and at most `looseness_limit` times as wide as the calibration range
(summed over channels), else the calibration range. A node whose range rests on an op without a
rule is *calibrated*, never sound (`TensorAnalysis.sound`, `Analysis.unsound`). Weights are
checked against their own golden per-output-channel min / max.

Scale: calibration keeps at most `attr_elements` values per activation and weights are attributed
on at most `weight_elements` seeded elements per tensor (shares are then estimates over that
sample, `TensorAnalysis.sampled`); the sensitivity pass runs one sample at a time over the
`competitors` closest classes, on `sens_samples` calibration inputs (auto: 256 below 80 k
parameters, fewer as models grow, at least 8).

Activations are the outputs of computing layers; pure view / shape ops (reshape, permute,
getitem, flatten, dropout in eval, ...) alias their input's memory and are not counted again.
"""

from __future__ import annotations

import copy
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
from save_ros.core.sensitivity import (
    Sensitivity,
    margin_sensitivity,
    output_sensitivity,
    top1_gaps,
)
from save_ros.errors import UserError

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
    sens_samples: int | None = None  # calibration samples for the sensitivity bound; None: auto
    task: str = "auto"  # classification | regression | auto (see the module docstring)
    # classification: closest classes whose gaps the bound protects; None: auto (16 below
    # 1 M parameters, else 8: each is one backward pass per sample)
    competitors: int | None = None
    tolerance: float | None = None  # regression: absolute output tolerance of a robust flip
    tolerance_share: float = 0.01  # ... else this share of each output's calibration span
    attr_elements: int = 1 << 16  # kept calibration values per activation (all samples)
    weight_elements: int = 1 << 16  # weight elements attributed per tensor (seeded sample)
    calib_batch: int = 16  # calibration inputs per forward pass, at most
    # extra memory of any phase (a calibration batch, a chunk of gradient directions) at most
    # this many times one forward pass (the weights and one sample's activations)
    memory_factor: float = 4.0


TASKS = ("auto", "classification", "regression")


class SelectConfigError(UserError, ValueError):
    """A Selection setting that cannot work (the message names the valid values)."""


def auto_sens_samples(n_params: int) -> int:
    """Calibration samples for the sensitivity pass: cost grows with the model, so fewer."""
    return int(min(256, max(8, 2e7 // max(1, n_params))))


def auto_competitors(n_params: int) -> int:
    """Competitor classes per sample: 16 (every class of a small head), 8 from 1 M parameters."""
    return 16 if n_params < 1_000_000 else 8


def detect_task(output, declared: str = "auto") -> str:
    """classification | regression for a model output (declared wins over detected)."""
    if declared not in TASKS:
        raise SelectConfigError(f"task={declared!r}; use one of {', '.join(TASKS)}")
    if declared != "auto":
        return declared
    if isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[1] >= 2:
        return "classification"
    return "regression"


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


def _is_view(layer, graph: ModelGraph, ranges: dict[str, NodeRange]) -> bool:
    """A shape op that aliases its input; getitem of a computed tuple (MHA) is a real tensor."""
    if layer.kind == "getitem" and layer.inputs and layer.inputs[0] not in ranges:
        try:
            return graph.layer(layer.inputs[0]).kind in VIEW_KINDS  # chunk / split: views
        except KeyError:
            return True
    return layer.kind in VIEW_KINDS


def _covered_samples(calib: torch.Tensor, outputs: torch.Tensor, cfg: SelectConfig,
                     n: int) -> torch.Tensor:
    """The sensitivity samples: half of them the calibration inputs with the smallest top-1
    gaps (at or above the gap quantile), half the first others.

    The robust claim covers inputs whose gap is at least the smallest gap among the samples, so
    taking the closest calls among them makes it cover every calibration-like input, and R
    (gradient over gap) is largest on them anyway.
    """
    top, gaps = top1_gaps(outputs)
    gaps[torch.arange(len(gaps)), top] = float("inf")
    g = gaps.amin(1)
    keep = torch.arange(len(g), device=g.device)
    if cfg.gap_quantile > 0:
        keep = keep[g >= torch.quantile(g, cfg.gap_quantile)]
    if len(keep) <= n:
        return calib[keep.to(calib.device)]
    order = keep[g[keep].argsort()]
    close = order[: n // 2]
    rest = [int(i) for i in keep if int(i) not in set(close.tolist())][: n - len(close)]
    pick = torch.cat([close, torch.tensor(rest, dtype=close.dtype, device=close.device)])
    return calib[pick.sort().values.to(calib.device)]


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


def _weight_entry(name: str, w: torch.Tensor, layer: str, sens: torch.Tensor | None,
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


def _model_outputs(model: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    """The model's outputs on x, in batches (no grad)."""
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


def _runnable_batch(graph: ModelGraph, calib: torch.Tensor, batch: int) -> int:
    """`batch`, or 1 for a model that takes only one input at a time (a torch.export program
    exported with batch 1 guards its batch size)."""
    if batch <= 1 or len(calib) < 2:
        return batch
    try:
        with torch.no_grad():
            graph.run(calib[:2])
    except Exception:  # a guard, a reshape to batch 1: calibrate one input at a time
        return 1
    return batch


def _forward_bytes(model: nn.Module, graph: ModelGraph, x: torch.Tensor) -> tuple[int, int]:
    """(weights + one sample's activations, one sample's activations) in bytes."""
    with torch.no_grad():
        _, values = graph.record(x)
    acts = sum(v.numel() * v.element_size() for v in values.values()
               if isinstance(v, torch.Tensor))
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return weights + acts, max(1, acts)


def _float_model(model: nn.Module) -> nn.Module:
    """The model itself when its floats are fp32, else an fp32 copy (Selection is fp32)."""
    if all(t.dtype == torch.float32 for t in model.state_dict().values()
           if t.is_floating_point()):
        return model
    return copy.deepcopy(model).float()


def _sensitivity(model, graph, calib, weights, acts, cfg, task, n_params, grad_budget,
                 outputs) -> tuple[Sensitivity, torch.Tensor, dict]:
    """The sensitivity pass for the task; returns it, the samples used and report entries."""
    n = cfg.sens_samples if cfg.sens_samples is not None else auto_sens_samples(n_params)
    names = [a.name for a in acts]
    if task == "classification":
        sens_in = _covered_samples(calib, outputs, cfg, n)
        k = cfg.competitors if cfg.competitors is not None else auto_competitors(n_params)
        res = margin_sensitivity(graph, sens_in, list(weights), names, k,
                                 grad_budget=grad_budget)
        return res, sens_in, {"competitors": k}
    flat = outputs.reshape(len(outputs), -1)
    if cfg.tolerance is not None:
        if not cfg.tolerance > 0:
            raise SelectConfigError(f"tolerance must be > 0, got {cfg.tolerance}")
        tol = torch.full((flat.shape[1],), float(cfg.tolerance), device=flat.device)
        how = f"absolute {cfg.tolerance:g}"
    else:
        span = flat.amax(0) - flat.amin(0)
        # an output that never moved on calibration: the share of its magnitude (at least 1)
        still = flat.mean(0).abs().clamp(min=1.0)
        tol = cfg.tolerance_share * torch.where(span > 0, span, still)
        how = (f"{cfg.tolerance_share:g} x each output's calibration span (x max(|mean|, 1) "
               "where it never moved)")
    sens_in = calib[:n]
    res = output_sensitivity(graph, sens_in, list(weights), names, tol, grad_budget)
    return res, sens_in, {"tolerance": tol.tolist(), "tolerance_rule": how}


class _ExactFp32:
    """TF32 off while Selection runs: a sound bound must hold for fp32 arithmetic."""

    def __enter__(self) -> None:
        self._saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc) -> None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self._saved


def analyze(model: nn.Module, example_input: torch.Tensor, input_range,
            calibration: torch.Tensor | None = None, margin: float = 0.1,
            config: SelectConfig | None = None) -> Analysis:
    """Run SAVE Selection on `model` for inputs inside `input_range`, on the model's device.

    Runs in exact fp32 (TF32 off); see the module docstring."""
    with _ExactFp32():
        return _analyze(model, example_input, input_range, calibration, margin, config)


def _analyze(
    model: nn.Module,
    example_input: torch.Tensor,
    input_range,
    calibration: torch.Tensor | None = None,
    margin: float = 0.1,
    config: SelectConfig | None = None,
) -> Analysis:
    """Run SAVE Selection on `model` for inputs inside `input_range`, on the model's device."""
    cfg = config or SelectConfig(margin=margin)
    cfg.margin = margin if config is None else cfg.margin
    if cfg.task not in TASKS:
        raise SelectConfigError(f"task={cfg.task!r}; use one of {', '.join(TASKS)}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model.eval()
    model = _float_model(model)
    example_input = example_input.float()
    graph = capture(model, example_input[:1])
    box = _range_record(input_range)
    key = analysis_key(model, graph.architecture(), box, asdict(cfg))
    timings["capture"] = time.perf_counter() - t0
    calib = calibration if calibration is not None else example_input
    calib = calib.to(example_input.device, torch.float32)
    weights = _weights(model, graph)
    if graph.capture != "fx":
        return _hooks_analysis(model, graph, key, box, cfg, weights, timings)

    t = time.perf_counter()
    fwd_bytes, act_bytes = _forward_bytes(model, graph, example_input[:1])
    batch = max(1, min(cfg.calib_batch, int(cfg.memory_factor * fwd_bytes // act_bytes)))
    batch = _runnable_batch(graph, calib, batch)
    pools = {layer.name: k for layer in graph.layers
             if (k := _pool_kernel(graph, layer)) is not None}
    outs: list[torch.Tensor] = []
    ranges, unsupported = node_ranges(graph, example_input[:1], input_range, calib, cfg.margin,
                                      cfg.calib_keep, cfg.attr_elements, pools, batch, outs)
    outputs = torch.cat(outs) if outs else _model_outputs(model, calib, batch).float()
    timings["ranges"] = time.perf_counter() - t
    acts = [layer for layer in graph.layers
            if layer.name in ranges and not _is_view(layer, graph, ranges)
            and ranges[layer.name].batch_dim == 0 and ranges[layer.name].samples is not None]

    t = time.perf_counter()
    with torch.no_grad():
        out = model(calib[:1])
    task = detect_task(out, cfg.task)
    n_params = sum(p.numel() for p in model.parameters())
    sens, sens_in, extra = _sensitivity(model, graph, calib, weights, acts, cfg, task, n_params,
                                        cfg.memory_factor * fwd_bytes, outputs)
    r_w, r_a, gaps = sens.weights, sens.activations, sens.gaps
    timings["sensitivity"] = time.perf_counter() - t

    t = time.perf_counter()
    tensors: dict[str, TensorAnalysis] = {}
    rules: dict[str, FlipRule] = {}
    for i, (name, (w, layer)) in enumerate(weights.items()):
        tensors[name], rules[name] = _weight_entry(name, w, layer, r_w.get(name), cfg, seed=i)
    for layer in acts:
        relu = bool(layer.users) and all(
            graph.layer(u).kind in RELU_KINDS for u in layer.users)
        tensors[layer.name], rules[layer.name] = _activation_entry(
            ranges[layer.name], layer.name, r_a.get(layer.name), relu, cfg, pools.get(layer.name))
    timings["attribution"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    settings = asdict(cfg) | extra | {
        "calibration_samples": len(calib), "sens_samples": len(sens_in),
        "sens_directions": sens.directions, "sens_batched": sens.batched,
        "device": str(example_input.device), "parameters": n_params,
        "forward_bytes": fwd_bytes, "calib_batch_used": batch,
        "min_gap": float(gaps.min()) if len(gaps) else None}
    analysis = Analysis(key=key, capture=graph.capture,
                        layers=[asdict(layer) for layer in graph.layers], tensors=tensors,
                        unsupported=unsupported, input_range=box,
                        settings=settings | {"notes": sens.notes},
                        timings=timings, task=task)
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
