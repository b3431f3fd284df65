"""How far one element of a tensor may move before the model's answer could change (first order).

Classification (`margin_sensitivity`): for a calibration sample b with top-1 class t and a
competitor class j, the gap d_j = z_t - z_j > 0. A perturbation delta of element i changes d_j by
about (dd_j / dx_i) * delta. Per element,

    R_i = max over samples b, competitors j of |dd_j / dx_i| / d_j,

so a perturbation with |delta| * R_i <= f (f < 1, the safety fraction) moves every competitor gap
by at most the fraction f of its size on every calibration sample. The competitors of a sample
are its `competitors` classes with the smallest gaps (all classes when there are fewer): a class
further away needs a proportionally larger gradient to overtake, and on a 1000-class head the
cost of all 999 directions (a gradient of every weight per direction) is what made Selection
run out of memory. `save_ros.eval.validate` measures the rule, not this argument.

Regression (`output_sensitivity`): for continuous outputs y_j with tolerance tau_j,

    R_i = max over samples b, outputs j of |dy_j / dx_i| / tau_j,

so |delta| * R_i <= f keeps every output within f * tau_j of its fault-free value (first order).

Both are first-order (empirical) rules: exact for the last affine layer, the safety fraction
covers curvature elsewhere.

Cost and memory: one sample at a time (per-sample weight gradients need it); the directions of a
sample are back-propagated in chunks (`torch.autograd.grad(is_grads_batched=True)`, a plain
per-direction loop where vmap cannot run an op), so peak memory is one forward with its graph
plus `chunk` gradients of every weight and activation. Everything runs on the model's device.
BatchNorm running stats are not differentiable in torch, so their R comes from the exact chain
rule through the affine weight and bias: dL/dmean = -(gamma / s) dL/dbeta,
dL/dvar = -gamma / (2 s^2) dL/dgamma, s = sqrt(var + eps).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from save_ros.core.graph import ModelGraph
from save_ros.core.inputs import InputBatch

GRAD_BUDGET_BYTES = 1 << 30  # per chunk of directions: gradients of every weight + activation


@dataclass
class Sensitivity:
    """R per element of the named weights and activations, and what the samples showed."""

    weights: dict[str, torch.Tensor]  # shape of the weight (inf: no gradient available)
    activations: dict[str, torch.Tensor]  # shape of one sample's value
    gaps: torch.Tensor  # classification: the smallest top-1 gap of each sample (else empty)
    directions: int = 0  # back-propagated directions in all
    batched: bool = True  # False when vmap failed and directions ran one by one
    notes: list[str] = field(default_factory=list)


def _bn_buffer_grads(model: nn.Module, grads: dict[str, torch.Tensor]) -> None:
    """Fill R of BatchNorm running_mean / running_var from those of weight / bias."""
    for path, m in model.named_modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or m.running_var is None:
            continue
        p = f"{path}." if path else ""
        if m.weight is None or f"{p}weight" not in grads or f"{p}bias" not in grads:
            continue
        var = m.running_var.detach().float() + m.eps
        gamma = m.weight.detach().float()
        grads[f"{p}running_mean"] = grads[f"{p}bias"] * (gamma / var.sqrt()).abs()
        grads[f"{p}running_var"] = grads[f"{p}weight"] * (gamma / (2 * var)).abs()


def top1_gaps(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-1 index, gaps z_t - z_j for all j) of a batch of logits (N, C)."""
    top = logits.argmax(dim=1)
    return top, logits.gather(1, top[:, None]) - logits


def margin_sensitivity(graph: ModelGraph, samples: InputBatch, weights: list[str],
                       activations: list[str], competitors: int = 16,
                       min_gap: float = 1e-6, grad_budget: int = GRAD_BUDGET_BYTES
                       ) -> Sensitivity:
    """R for a classifier: gaps to the `competitors` closest classes of each sample."""

    def directions(z: torch.Tensor) -> tuple[torch.Tensor, float]:
        top, gaps = top1_gaps(z.detach().float())
        t = int(top[0])
        g = gaps[0].clone()
        g[t] = float("inf")
        k = min(competitors, z.shape[1] - 1)
        near = torch.topk(g, k, largest=False).indices
        d = g[near].clamp_min(min_gap)
        go = torch.zeros(k, *z.shape, device=z.device, dtype=z.dtype)
        rows = torch.arange(k, device=z.device)
        go[rows, 0, t] = (1.0 / d).to(z.dtype)
        go[rows, 0, near] = (-1.0 / d).to(z.dtype)
        return go, float(d.min())

    return _sensitivity(graph, samples, weights, activations, directions, True, grad_budget)


def output_sensitivity(graph: ModelGraph, samples: InputBatch, weights: list[str],
                       activations: list[str], tolerance: torch.Tensor,
                       grad_budget: int = GRAD_BUDGET_BYTES) -> Sensitivity:
    """R for continuous outputs: |dy_j / dx_i| / tolerance_j, over every output j."""

    def directions(z: torch.Tensor) -> tuple[torch.Tensor, float]:
        flat = z.reshape(-1)
        m = flat.numel()
        tol = tolerance.to(z.device, torch.float32).reshape(-1).expand(m)
        go = torch.zeros(m, m, device=z.device, dtype=z.dtype)
        go[torch.arange(m), torch.arange(m)] = (1.0 / tol).to(z.dtype)
        return go.reshape(m, *z.shape), 0.0

    return _sensitivity(graph, samples, weights, activations, directions, False, grad_budget)


def _sensitivity(graph: ModelGraph, samples: InputBatch, weights: list[str],
                 activations: list[str],
                 directions: Callable[[torch.Tensor], tuple[torch.Tensor, float]],
                 track_gaps: bool, grad_budget: int = GRAD_BUDGET_BYTES) -> Sensitivity:
    """Max over samples and directions of |grad| for every named weight and activation."""
    if graph.gm is None:
        raise NotImplementedError("sensitivity needs an fx capture")
    model = graph.model
    named = dict(model.named_parameters())
    named.update(dict(model.named_buffers()))
    leaves = {n: named[n] for n in weights if n in named and isinstance(named[n], nn.Parameter)}
    r_w = {n: torch.zeros(named[n].shape, dtype=torch.float32, device=named[n].device)
           for n in weights if n in named}
    r_a: dict[str, torch.Tensor] = {}
    keep = set(activations)
    nodes = {n.name: n for n in graph.gm.graph.nodes}
    gaps = torch.empty(len(samples) if track_gaps else 0)
    was = {n: p.requires_grad for n, p in leaves.items()}
    res = Sensitivity(r_w, r_a, gaps)
    chunk = None
    try:
        for p in leaves.values():
            p.requires_grad_(True)
        for b in range(len(samples)):
            with torch.enable_grad():
                interp = fx.Interpreter(graph.gm, garbage_collect_values=False)
                z = interp.run(*samples[b : b + 1].tensors)  # an InputBatch
                acts = {n: interp.env[nodes[n]] for n in keep
                        if n in nodes and isinstance(interp.env.get(nodes[n]), torch.Tensor)
                        and interp.env[nodes[n]].requires_grad}
                go, gap = directions(z)
                if track_gaps:
                    gaps[b] = gap
                inputs = list(leaves.values()) + list(acts.values())
                if not inputs or not z.requires_grad:  # nothing to differentiate
                    res.notes.append("no parameter or activation takes a gradient: nothing "
                                     "is numerically robust")
                    break
                if chunk is None:
                    per = sum(t.numel() * 4 for t in inputs) or 1
                    chunk = max(1, min(len(go), int(grad_budget) // per))
                for s in range(0, len(go), chunk):
                    grads = _batched_grads(z, inputs, go[s : s + chunk], res)
                    _accumulate(grads, leaves, acts, r_w, r_a)
                res.directions += len(go)
                del interp, z, acts, inputs
    finally:
        for n, p in leaves.items():
            p.requires_grad_(was[n])
    _bn_buffer_grads(model, r_w)
    for n in r_w:
        if n not in leaves and not n.endswith(("running_mean", "running_var")):
            r_w[n] = torch.full_like(r_w[n], float("inf"))  # no gradient: never robust
    return res


def _accumulate(grads, leaves: dict, acts: dict, r_w: dict, r_a: dict) -> None:
    """Fold one chunk of per-direction gradients into the running maxima (in place)."""
    for n, gr in zip(leaves, grads[: len(leaves)], strict=True):
        if gr is not None:
            torch.maximum(r_w[n], gr.detach().abs().amax(0).float(), out=r_w[n])
    for n, gr in zip(acts, grads[len(leaves):], strict=True):
        if gr is None:
            continue
        ga = gr.detach().abs().amax(0)[0].float()  # drop the direction and the batch dims
        if n in r_a:
            torch.maximum(r_a[n], ga, out=r_a[n])
        else:
            r_a[n] = ga


def _batched_grads(z: torch.Tensor, inputs: list[torch.Tensor], go: torch.Tensor,
                   res: Sensitivity):
    """Gradients of z for each row of `go` (a leading direction dim): vmap, else a loop.

    The graph is kept (`retain_graph`) so the next chunk, or the loop after a failed vmap, can
    use it again.
    """
    if res.batched:
        try:
            return torch.autograd.grad(z, inputs, grad_outputs=go, is_grads_batched=True,
                                       retain_graph=True, allow_unused=True,
                                       materialize_grads=True)
        except RuntimeError as exc:  # an op without a batching rule
            res.batched = False
            res.notes.append(f"vmap over directions failed ({str(exc).splitlines()[0][:120]}); "
                             "directions run one by one")
    out: list[list[torch.Tensor]] = [[] for _ in inputs]
    for r in range(go.shape[0]):
        gs = torch.autograd.grad(z, inputs, grad_outputs=go[r], retain_graph=True,
                                 allow_unused=True, materialize_grads=True)
        for i, g in enumerate(gs):
            out[i].append(g)
    return [torch.stack(o) for o in out]
