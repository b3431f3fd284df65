"""`analyze()`: SAVE Selection end to end, and `key_for()`, the key it gives without running it.

`analyze(model, example_input, input_range, calibration=None)` captures the graph, propagates
the input boxes (sound ranges, `ranges`; one per input, `core.inputs`: a model may take several
inputs, integer ones exact), runs the calibration inputs (observed ranges, widened by
`margin`), bounds the first-order sensitivity of the model's answer to each element
(`sensitivity`) and classifies every single-bit flip of every element (`tensors`,
`attribution`). It runs on the model's own device, in exact fp32 (TF32 off; a model stored in
fp16 / bf16 is analysed as an fp32 copy).

Scale: calibration keeps at most `attr_elements` values per activation and weights are attributed
on at most `weight_elements` seeded elements per tensor (shares are then estimates over that
sample, `TensorAnalysis.sampled`); the sensitivity pass runs one sample at a time over the
`competitors` closest classes, on `sens_samples` calibration inputs (auto: 256 below 80 k
parameters, fewer as models grow, at least 8); memory stays within `memory_factor` forward passes.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict

import torch
from torch import nn

from save_ros.core.analysis import Analysis, TensorAnalysis, analysis_key
from save_ros.core.graph import ModelGraph, capture
from save_ros.core.inputs import InputBatch, ModelInputs
from save_ros.core.select.attribution import FlipRule
from save_ros.core.select.config import (
    TASKS,
    SelectConfig,
    SelectConfigError,
    auto_competitors,
    auto_sens_samples,
    detect_task,
)
from save_ros.core.select.ranges import node_ranges
from save_ros.core.select.sensitivity import (
    Sensitivity,
    margin_sensitivity,
    output_sensitivity,
    top1_gaps,
)
from save_ros.core.select.tensors import (
    RELU_KINDS,
    activation_entry,
    is_view,
    pool_kernel,
    weight_entry,
    weights_of,
)


def _covered_samples(calib: InputBatch, outputs: torch.Tensor, cfg: SelectConfig,
                     n: int) -> InputBatch:
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


def key_for(model: nn.Module, example_input, input_range,
            config: SelectConfig | None = None) -> str:
    """The key `analyze` would give: compare with a saved Analysis before re-running it."""
    inputs = ModelInputs.of(model, example_input, input_range)
    ex = inputs.batch(example_input, "example_input")
    graph = capture(model.eval(), ex[:1].tensors)
    return analysis_key(model, graph.architecture(), inputs.record(),
                        asdict(config or SelectConfig()))


def _model_outputs(model: nn.Module, x: InputBatch, batch: int) -> torch.Tensor:
    """The model's outputs on x, in batches (no grad)."""
    with torch.no_grad():
        return torch.cat([model(*x[i : i + batch].tensors) for i in range(0, len(x), batch)])


def _runnable_batch(graph: ModelGraph, calib: InputBatch, batch: int) -> int:
    """`batch`, or 1 for a model that takes only one input at a time (a torch.export program
    exported with batch 1 guards its batch size)."""
    if batch <= 1 or len(calib) < 2:
        return batch
    try:
        with torch.no_grad():
            graph.run(*calib[:2].tensors)
    except Exception:  # a guard, a reshape to batch 1: calibrate one input at a time
        return 1
    return batch


def _forward_bytes(model: nn.Module, graph: ModelGraph, x: InputBatch) -> tuple[int, int]:
    """(weights + one sample's activations, one sample's activations) in bytes."""
    with torch.no_grad():
        _, values = graph.record(*x.tensors)
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


def analyze(model: nn.Module, example_input, input_range,
            calibration=None, margin: float = 0.1,
            config: SelectConfig | None = None) -> Analysis:
    """Run SAVE Selection on `model` for inputs inside `input_range`, on the model's device.

    `example_input` and `calibration`: a tensor, or a tuple / list / dict of tensors (or an
    `InputBatch`); `input_range`: one box per input, or a `ModelInputs` (`core.inputs`).
    Runs in exact fp32 (TF32 off); see the module docstring."""
    with _ExactFp32():
        return _analyze(model, example_input, input_range, calibration, margin, config)


def _analyze(
    model: nn.Module,
    example_input,
    input_range,
    calibration=None,
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
    inputs = ModelInputs.of(model, example_input, input_range)
    model = _float_model(model)
    ex = example_input if isinstance(example_input, InputBatch) else \
        inputs.batch(example_input, "example_input")
    ex = ex.float()
    graph = capture(model, ex[:1].tensors)
    record = inputs.record()
    key = analysis_key(model, graph.architecture(), record, asdict(cfg))
    timings["capture"] = time.perf_counter() - t0
    if calibration is None:
        calib = ex
    elif isinstance(calibration, InputBatch):
        calib = calibration
    else:
        calib = inputs.batch(inputs.to(calibration, ex.device), "calibration")
    calib = calib.to(ex.device, torch.float32)
    weights = weights_of(model, graph)
    if graph.capture != "fx":
        return _hooks_analysis(model, graph, key, record, cfg, weights, timings)

    t = time.perf_counter()
    fwd_bytes, act_bytes = _forward_bytes(model, graph, ex[:1])
    batch = max(1, min(cfg.calib_batch, int(cfg.memory_factor * fwd_bytes // act_bytes)))
    batch = _runnable_batch(graph, calib, batch)
    pools = {layer.name: k for layer in graph.layers
             if (k := pool_kernel(graph, layer)) is not None}
    outs: list[torch.Tensor] = []
    ranges, unsupported = node_ranges(graph, ex[:1], inputs, calib, cfg.margin,
                                      cfg.calib_keep, cfg.attr_elements, pools, batch, outs)
    outputs = torch.cat(outs) if outs else _model_outputs(model, calib, batch).float()
    timings["ranges"] = time.perf_counter() - t
    acts = [layer for layer in graph.layers
            if layer.name in ranges and not is_view(layer, graph, ranges)
            and ranges[layer.name].batch_dim == 0 and ranges[layer.name].samples is not None]

    t = time.perf_counter()
    with torch.no_grad():
        out = model(*calib[:1].tensors)
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
        tensors[name], rules[name] = weight_entry(name, w, layer, r_w.get(name), cfg, seed=i)
    for layer in acts:
        relu = bool(layer.users) and all(
            graph.layer(u).kind in RELU_KINDS for u in layer.users)
        tensors[layer.name], rules[layer.name] = activation_entry(
            ranges[layer.name], layer.name, r_a.get(layer.name), relu, cfg, pools.get(layer.name))
    timings["attribution"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    settings = asdict(cfg) | extra | {
        "calibration_samples": len(calib), "sens_samples": len(sens_in),
        "sens_directions": sens.directions, "sens_batched": sens.batched,
        "device": str(ex.device), "parameters": n_params,
        "forward_bytes": fwd_bytes, "calib_batch_used": batch,
        "min_gap": float(gaps.min()) if len(gaps) else None}
    analysis = Analysis(key=key, capture=graph.capture,
                        layers=[asdict(layer) for layer in graph.layers], tensors=tensors,
                        unsupported=unsupported, input_range=record,
                        settings=settings | {"notes": sens.notes},
                        timings=timings, task=task)
    analysis.rules = rules
    analysis.graph = graph
    return analysis


def _hooks_analysis(model, graph, key, record, cfg, weights, timings) -> Analysis:
    """Without fx: weights against their golden ranges, nothing numerically robust."""
    tensors, rules = {}, {}
    for name, (w, layer) in weights.items():
        tensors[name], rules[name] = weight_entry(name, w, layer, None, cfg)
    analysis = Analysis(key=key, capture=graph.capture,
                        layers=[asdict(layer) for layer in graph.layers], tensors=tensors,
                        unsupported=["(whole model): torch.fx could not trace it; activations "
                                     "are not analysed and no flip is classed robust"],
                        input_range=record, settings=asdict(cfg), timings=timings)
    analysis.rules = rules
    analysis.graph = graph
    return analysis
