"""Validate a Selection analysis by injecting single bit flips sampled from each class.

Weights: for each class, `per_class` (tensor, element, bit) flips are drawn uniformly from the
flips the analysis puts in that class (golden values); each is applied to the live model, one
forward runs on a fixed evaluation batch, and the flip is undone bit-exactly. Activations: flips
(evaluation input, activation, element, bit) are drawn uniformly, classified on the actual value
of that input with the analysis' rule, kept until every class has `per_class`, and run in batches
(one flip per row) through an fx interpreter that flips the element as the node is computed.

Reported per class: how many flips changed the top-1 output (for a weight: on any input of the
evaluation batch), and how many stayed inside the *saved* checked range (the lists the runtime
checks): must be 0 for ranging flips. Claims: robust flips change nothing (target <= 0.1 %),
ranging flips are caught by the range check.

What "changed" means follows the analysis' task: the top-1 class (classification) or any output
by more than its tolerance (regression, `Analysis.settings["tolerance"]`).

Covered inputs: the robust rule bounds each top-1 gap relative to the gaps seen in calibration,
so it speaks for inputs whose top-1 gap is at least the smallest calibration gap; an input closer
to a decision boundary than any calibration input flips under any perturbation. `changed` counts
covered inputs, `changed_any` all inputs, and `changed_inferences / inferences` is the per
(flip, input) rate; all three are reported. For regression every input is covered (the tolerance
does not depend on the input). With no covered input there is nothing to report on:
`validate` refuses (ValidationError) instead of reporting 0 misattributions.

Scale: weight flips are drawn from at most `weight_elements` seeded elements per tensor, so
validating a ResNet-50 does not classify all of its 800 M weight bits; pass a small evaluation
batch (16-64 inputs) for 224 x 224 models, since every activation of it is kept.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from torch import fx

from save_ros.core import bits
from save_ros.core.analysis import Analysis, BitClass, TensorAnalysis, TensorKind
from save_ros.core.select.attribution import FlipRule, classify, pool_other_max
from save_ros.core.select.sensitivity import top1_gaps
from save_ros.errors import UserError
from save_ros.eval.methods import model_args


class ValidationError(UserError, ValueError):
    """An analysis that cannot be validated (no in-memory rules or graph)."""


@dataclass
class ClassResult:
    """Outcome of the flips drawn from one class."""

    flips: int = 0
    changed: int = 0  # flips that changed the top-1 output of a covered input
    changed_any: int = 0  # ... of any evaluation input, covered or not
    inferences: int = 0  # (flip, input) pairs run
    changed_inferences: int = 0  # pairs whose top-1 output changed
    inside_range: int = 0  # flips whose value stayed inside the saved checked range

    @property
    def changed_rate(self) -> float:
        """Share of flips that changed a top-1 output."""
        return self.changed / self.flips if self.flips else 0.0


@dataclass
class ValidationReport:
    """Per kind (weight / activation) and class, the outcome of the sampled flips."""

    weights: dict[str, ClassResult] = field(default_factory=dict)
    activations: dict[str, ClassResult] = field(default_factory=dict)
    per_class: int = 0
    eval_inputs: int = 0
    covered_inputs: int = 0  # evaluation inputs with top-1 gap >= the smallest calibration gap
    min_gap: float = 0.0
    seed: int = 0
    seconds: float = 0.0
    task: str = "classification"

    def to_dict(self) -> dict:
        """Plain data for JSON, with rates."""
        def part(d):
            return {k: asdict(v) | {"changed_rate": v.changed_rate} for k, v in d.items()}
        return {"weights": part(self.weights), "activations": part(self.activations),
                "per_class": self.per_class, "eval_inputs": self.eval_inputs,
                "covered_inputs": self.covered_inputs, "min_gap": self.min_gap,
                "seed": self.seed, "seconds": self.seconds, "task": self.task}


def _saved_range(t: TensorAnalysis, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The saved checked range broadcast to a batched element shape (batch dim first)."""
    lo, hi = t.check_range()
    lo_t = torch.as_tensor(lo, dtype=torch.float32)
    hi_t = torch.as_tensor(hi, dtype=torch.float32)
    if lo_t.dim() == 0 or t.channel_dim is None:
        return lo_t.reshape(1), hi_t.reshape(1)
    view = [1] * len(shape)
    view[t.channel_dim] = -1
    return lo_t.reshape(view).expand(shape), hi_t.reshape(view).expand(shape)


def _outside(new: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """True where a value is NaN / Inf or outside [lo, hi]."""
    return ~torch.isfinite(new) | (new < lo) | (new > hi)


def _weight_flips(analysis: Analysis, params: dict[str, torch.Tensor], per_class: int,
                  gen: torch.Generator, weight_elements: int = 1 << 18):
    """Sample per_class (name, flat index, bit) flips of every class from the weights."""
    codes, owners, where = [], [], []
    names = [t.name for t in analysis.weights() if t.name in params]
    for i, name in enumerate(names):
        w = params[name].detach()
        w1 = w.reshape(1) if w.dim() == 0 else w
        pos = None
        if w1.numel() > weight_elements:  # a seeded sample of elements, classified in place
            pos = torch.randperm(w1.numel(), generator=gen)[:weight_elements].to(w.device)
        for bit in range(bits.layout_of(w.dtype).width):
            code = classify(w1, bit, analysis.rules[name]).reshape(-1)
            codes.append((code if pos is None else code[pos]).cpu())
            owners.append((i, bit, len(codes[-1])))
            where.append(pos)
    flat = torch.cat(codes)
    starts = torch.tensor([0] + [o[2] for o in owners]).cumsum(0)
    out: dict[BitClass, list[tuple[str, int, int]]] = {}
    for cls in BitClass:
        pos = (flat == int(cls)).nonzero().reshape(-1)
        pick = pos[torch.randperm(len(pos), generator=gen)[:per_class]]
        seg = torch.searchsorted(starts, pick, right=True) - 1
        out[cls] = []
        for p, s in zip(pick.tolist(), seg.tolist(), strict=True):
            k = int(p - starts[s])
            idx = k if where[s] is None else int(where[s][k])
            out[cls].append((names[owners[s][0]], idx, owners[s][1]))
    return out


def _changed_fn(analysis: Analysis, out: torch.Tensor):
    """(golden answer, covered mask, changed(new_out, rows) -> bool mask) for the task."""
    if analysis.task == "regression":
        golden = out.reshape(len(out), -1)
        tol = torch.as_tensor(analysis.settings.get("tolerance") or [0.0],
                              dtype=golden.dtype, device=golden.device)

        def changed(new: torch.Tensor, rows) -> torch.Tensor:
            d = (new.reshape(len(new), -1) - golden[rows]).abs()
            return torch.nan_to_num(d, nan=float("inf")).gt(tol).any(1)

        return golden, torch.ones(len(out), dtype=torch.bool, device=out.device), changed, 0.0
    if not (isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] >= 2):
        raise ValidationError("validate compares top-1 outputs: the model must return "
                              "(N, classes) logits with at least 2 classes, or be analysed "
                              "with task='regression'")
    top, gaps = top1_gaps(out)
    gaps[torch.arange(len(gaps)), top] = float("inf")
    min_gap = float(analysis.settings.get("min_gap") or 0.0)

    def changed(new: torch.Tensor, rows) -> torch.Tensor:
        return new.argmax(1) != top[rows]

    return top, gaps.amin(1) >= min_gap, changed, min_gap


@torch.no_grad()
def _validate_weights(model, analysis, x, changed, covered, per_class, gen
                      ) -> dict[str, ClassResult]:
    """Flip, forward on the evaluation batch, undo; per class."""
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    results = {}
    every = slice(None)
    for cls, flips in _weight_flips(analysis, params, per_class, gen).items():
        res = ClassResult()
        for name, idx, bit in flips:
            p = params[name].data
            t = analysis.tensors[name]
            bits.flip_(p, idx, bit)
            try:
                shaped = p.reshape(1) if p.dim() == 0 else p
                lo, hi = _saved_range(t, tuple(shaped.shape))
                lo_e = lo.reshape(-1)[idx if lo.numel() > 1 else 0]
                hi_e = hi.reshape(-1)[idx if hi.numel() > 1 else 0]
                new = p.reshape(-1)[idx]
                res.inside_range += int(not bool(_outside(new, lo_e, hi_e)))
                diff = changed(model(*model_args(x)), every)
                res.changed += int(bool((diff & covered).any()))
                res.changed_any += int(bool(diff.any()))
                res.changed_inferences += int(diff.sum())
                res.inferences += len(x)
            finally:
                bits.flip_(p, idx, bit)  # undo: the same flip again restores the bits
            res.flips += 1
        results[cls.name.lower()] = res
    return results


class _FlipInterpreter(fx.Interpreter):
    """Runs the graph and flips (row, flat element, bit) of named nodes as they are computed."""

    def __init__(self, gm: fx.GraphModule, flips: dict[str, list[tuple[int, int, int]]]):
        super().__init__(gm, garbage_collect_values=True)
        self.flips = flips

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        todo = self.flips.get(n.name)
        if todo:
            out = out.contiguous().clone()
            per_row = out[0].numel()
            idx = torch.tensor([r * per_row + e for r, e, _ in todo])
            bits.flip_(out.view(-1), idx, torch.tensor([b for _, _, b in todo]))
        return out


def _rule_at(rule: FlipRule, shape: tuple[int, ...], flat: torch.Tensor) -> FlipRule:
    """The rule of the elements at `flat` indices of one sample (shape without batch)."""
    return rule.at(lambda t: t.expand(1, *shape).reshape(-1)[flat])


@torch.no_grad()
def _validate_activations(analysis, x, changed, covered, per_class, gen, batch
                          ) -> dict[str, ClassResult]:
    """Sample activation flips per class on the evaluation inputs and run them in batches."""
    graph = analysis.graph
    acts = [t for t in analysis.activations() if t.name in analysis.rules]
    _, values = graph.record(*model_args(x), keep=lambda n: n in {t.name for t in acts})
    sizes = torch.tensor([float(t.numel) for t in acts])
    picked: dict[BitClass, list[tuple[int, str, int, int]]] = {c: [] for c in BitClass}
    for _ in range(200):  # rejection sampling rounds; rare classes may stay short
        if all(len(v) >= per_class for v in picked.values()):
            break
        n = 20_000
        which = torch.multinomial(sizes, n, replacement=True, generator=gen)
        rows = torch.randint(len(x), (n,), generator=gen)
        bit = torch.randint(32, (n,), generator=gen)
        elem = (torch.rand(n, generator=gen) * sizes[which]).long()
        code = torch.empty(n, dtype=torch.int8)
        for ti, t in enumerate(acts):
            sel = (which == ti).nonzero().reshape(-1)
            if not len(sel):
                continue
            v = values[t.name].reshape(len(x), -1)[rows[sel], elem[sel]]
            rule = _rule_at(analysis.rules[t.name], tuple(t.shape), elem[sel])
            other = None
            if rule.pool_kernel:  # the window context of these very inputs
                other = pool_other_max(values[t.name], rule.pool_kernel)
                other = other.reshape(len(x), -1)[rows[sel], elem[sel]]
            for b in bit[sel].unique().tolist():
                m = bit[sel] == b
                sub = rule.at(lambda t, m=m: t[m])
                code[sel[m]] = classify(v[m].contiguous(), b, sub,
                                        None if other is None else other[m]).cpu()
        for cls in BitClass:
            need = per_class - len(picked[cls])
            hit = (code == int(cls)).nonzero().reshape(-1)[:max(need, 0)].tolist()
            picked[cls] += [(int(rows[i]), acts[int(which[i])].name, int(elem[i]), int(bit[i]))
                            for i in hit]
    results = {}
    for cls, flips in picked.items():
        res = ClassResult()
        for start in range(0, len(flips), batch):
            chunk = flips[start : start + batch]
            plan: dict[str, list[tuple[int, int, int]]] = {}
            for i, (_, name, e, b) in enumerate(chunk):
                plan.setdefault(name, []).append((i, e, b))
            rows = torch.tensor([r for r, _, _, _ in chunk])
            out = _FlipInterpreter(graph.gm, plan).run(*model_args(x[rows.to(x.device)]))
            diff = changed(out, rows.to(x.device))
            res.changed += int((diff & covered[rows.to(x.device)]).sum())
            res.changed_any += int(diff.sum())
            res.changed_inferences += int(diff.sum())
            res.inferences += len(chunk)
            for r, name, e, b in chunk:
                t = analysis.tensors[name]
                lo, hi = _saved_range(t, (1, *t.shape))
                new = bits.flipped(values[name][r].reshape(-1)[e : e + 1], b)
                k = e if lo.numel() > 1 else 0
                res.inside_range += int(not bool(_outside(new, lo.reshape(-1)[k],
                                                          hi.reshape(-1)[k])))
            res.flips += len(chunk)
        results[cls.name.lower()] = res
    return results


def validate(model: torch.nn.Module, analysis: Analysis, eval_inputs,
             per_class: int = 2000, seed: int = 0, batch: int = 512) -> ValidationReport:
    """Inject `per_class` single flips per class and kind; report what they did.

    `eval_inputs`: a tensor, or an `InputBatch` for a model of several inputs."""
    if analysis.rules is None or analysis.graph is None:
        raise ValidationError("validate needs the analysis from analyze() in this process "
                              "(a loaded file has no rules); re-run analyze()")
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model(*model_args(eval_inputs))
    _golden, covered, changed, min_gap = _changed_fn(analysis, out)
    if not bool(covered.any()):
        raise ValidationError(
            f"no evaluation input is covered: every top-1 gap is below the smallest calibration "
            f"gap ({min_gap:.3g}), so the robust claim says nothing about them and a report "
            "would show 0 misattributions by construction; validate on inputs like the "
            "calibration set, or analyse with calibration inputs closer to the decision "
            "boundary")
    rep = ValidationReport(per_class=per_class, eval_inputs=len(eval_inputs),
                           covered_inputs=int(covered.sum()), min_gap=min_gap, seed=seed,
                           task=analysis.task)
    rep.weights = _validate_weights(model, analysis, eval_inputs, changed, covered, per_class,
                                    gen)
    if analysis.graph.gm is not None and analysis.activations():
        rep.activations = _validate_activations(analysis, eval_inputs, changed, covered,
                                                per_class, gen, batch)
    rep.seconds = time.perf_counter() - t0
    return rep


__all__ = ["ClassResult", "TensorKind", "ValidationError", "ValidationReport", "validate"]
