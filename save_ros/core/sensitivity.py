"""How far one element of a tensor may move before the top-1 output could change (first order).

For a calibration sample b with top-1 class t and every other class j, the gap
d_j = z_t - z_j > 0. A perturbation delta of one element i changes d_j by about
(dd_j / dx_i) * delta. `margin_sensitivity` returns, per element,

    R_i = max over samples b, classes j != t of |dd_j / dx_i| / d_j,

so a perturbation with |delta| * R_i <= f (f < 1, the safety fraction) moves every gap by at most
the fraction f of its size on every calibration sample. This is a first-order (empirical) rule:
it is exact for the last affine layer and the safety fraction covers the curvature elsewhere;
`save_ros.eval.validate` measures how often it is wrong.

Weights (parameters and float buffers) get per-sample gradients (one backward per sample, all
gap directions batched); activations get theirs from the same passes. BatchNorm running stats
are not differentiable in torch, so their gradients come from the exact chain rule through the
affine weight and bias: dL/dmean = -(gamma / s) dL/dbeta, dL/dvar = -gamma / (2 s^2) dL/dgamma,
s = sqrt(var + eps).
"""

from __future__ import annotations

import torch
from torch import fx, nn

from save_ros.core.graph import ModelGraph


def _bn_buffer_grads(model: nn.Module, grads: dict[str, torch.Tensor]) -> None:
    """Fill grads of BatchNorm running_mean / running_var from those of weight / bias."""
    for path, m in model.named_modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or m.running_var is None:
            continue
        p = f"{path}." if path else ""
        if m.weight is None or f"{p}weight" not in grads or f"{p}bias" not in grads:
            continue
        var = m.running_var.detach() + m.eps
        gamma = m.weight.detach()
        grads[f"{p}running_mean"] = grads[f"{p}bias"] * (gamma / var.sqrt()).abs()
        grads[f"{p}running_var"] = grads[f"{p}weight"] * (gamma / (2 * var)).abs()


def top1_gaps(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-1 index, gaps z_t - z_j for all j) of a batch of logits (N, C)."""
    top = logits.argmax(dim=1)
    return top, logits.gather(1, top[:, None]) - logits


def margin_sensitivity(
    graph: ModelGraph,
    samples: torch.Tensor,
    weights: list[str],
    activations: list[str],
    min_gap: float = 1e-6,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """R per element for the named weights and activations, and the top-1 gaps of the samples.

    Returns (R_weights {name: shape of the weight}, R_acts {name: one sample's shape},
    min gap per sample). Tensors whose gradient torch cannot give keep R = inf.
    """
    if graph.gm is None:
        raise NotImplementedError("sensitivity needs an fx capture")
    model = graph.model
    named = dict(model.named_parameters())
    named.update(dict(model.named_buffers()))
    leaves = {n: named[n] for n in weights if n in named and isinstance(named[n], nn.Parameter)}
    r_w = {n: torch.zeros_like(named[n], dtype=torch.float32) for n in weights}
    r_a: dict[str, torch.Tensor] = {}
    keep = set(activations)
    nodes = {n.name: n for n in graph.gm.graph.nodes}
    gaps_min = torch.empty(len(samples))
    was = {n: p.requires_grad for n, p in leaves.items()}
    try:
        for p in leaves.values():
            p.requires_grad_(True)
        for b in range(len(samples)):
            x = samples[b : b + 1]
            with torch.enable_grad():
                interp = fx.Interpreter(graph.gm, garbage_collect_values=False)
                z = interp.run(x)
                acts = {n: interp.env[nodes[n]] for n in keep
                        if n in nodes and isinstance(interp.env.get(nodes[n]), torch.Tensor)
                        and interp.env[nodes[n]].requires_grad}
                top, gaps = top1_gaps(z.detach())
                t = int(top[0])
                others = [j for j in range(z.shape[1]) if j != t]
                g = gaps[0, others].clamp_min(min_gap)
                gaps_min[b] = g.min()
                # One backward per gap direction e_t - e_j, scaled by 1 / gap: batched.
                go = torch.zeros(len(others), *z.shape)
                for r, j in enumerate(others):
                    go[r, 0, t] = 1.0 / g[r]
                    go[r, 0, j] = -1.0 / g[r]
                inputs = list(leaves.values()) + list(acts.values())
                grads = _batched_grads(z, inputs, go)
            gw = {n: gr.abs().amax(0) for n, gr in zip(leaves, grads[: len(leaves)], strict=True)
                  if gr is not None}
            _bn_buffer_grads(model, gw)
            for n, gr in gw.items():
                if n in r_w:
                    r_w[n] = torch.maximum(r_w[n], gr)
            for n, gr in zip(acts, grads[len(leaves):], strict=True):
                if gr is None:
                    continue
                ga = gr.abs().amax(0)[0]  # drop the direction and the batch dims
                r_a[n] = ga if n not in r_a else torch.maximum(r_a[n], ga)
    finally:
        for n, p in leaves.items():
            p.requires_grad_(was[n])
    for n in weights:
        if n not in leaves and not n.endswith(("running_mean", "running_var")):
            r_w[n] = torch.full_like(r_w[n], float("inf"))  # no gradient: never numerically robust
    return r_w, r_a, gaps_min


def _batched_grads(z: torch.Tensor, inputs: list[torch.Tensor], go: torch.Tensor):
    """Gradients of z for each row of `go` (a leading direction dim); vmap, else a loop."""
    try:
        return torch.autograd.grad(z, inputs, grad_outputs=go, is_grads_batched=True,
                                   allow_unused=True, materialize_grads=True)
    except RuntimeError:
        out = [[] for _ in inputs]
        for r in range(go.shape[0]):
            gs = torch.autograd.grad(z, inputs, grad_outputs=go[r], retain_graph=True,
                                     allow_unused=True, materialize_grads=True)
            for i, g in enumerate(gs):
                out[i].append(g)
        return [torch.stack(o) for o in out]
