"""The `dmr` kind: re-compute the layer from its saved inputs and compare with its output.

- plan entry (`enter`): a layer with vulnerable bits (or one Selection did not analyse) gets it
  first; it probes whether the op re-computes bit-exactly on this machine (`c.exact`: compare
  with `torch.equal`, else within an fp32 bound), measures its cost, and makes a re-computation
  that would read the saved memory back (a view, `getitem` of a tuple-valued layer) re-compute
  through its producers. `chain` merges runs of exact DMR layers into segments
  (`ProtectConfig.chain_dmr`). ABFT and the memory checksum may take it over (their `offer`).
- eager check (`eager_check`): the re-computation against the saved value (`dmr_mismatch`);
- device check: the group's bit-exact tensor DMRs re-computed and compared in one fused compare
  per dtype (`FusedDmr`, one flag); every other DMR (inexact, tuple outputs, chained) gets a flag
  of its own (`dmr_differs`, no host sync).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from save_ros.core import bits
from save_ros.core.verify.checks import CheckKind, LayerCheck
from save_ros.core.verify.kinds.base import EagerRun, Kind, PlanContext, aliases_input, best_time
from save_ros.core.verify.status import Detection


def dmr_differs(recomputed: Any, saved: Any, exact: bool) -> torch.Tensor | bool:
    """A device bool (no host sync): the re-computation differs from the saved value.

    The device-side twin of `dmr_mismatch` for captured check programs; NaN always differs.
    """
    if isinstance(saved, torch.Tensor):
        if not isinstance(recomputed, torch.Tensor) or recomputed.shape != saved.shape:
            return True
        if exact or not recomputed.is_floating_point():
            return ~(recomputed == saved).all()
        scale = recomputed.abs().amax() * 1e-6 + 1e-30
        return ~((recomputed - saved).abs() <= 1e-5 * recomputed.abs() + scale).all()
    if isinstance(saved, (tuple, list)):
        if not isinstance(recomputed, (tuple, list)) or len(recomputed) != len(saved):
            return True
        flags = [dmr_differs(r, s, exact) for r, s in zip(recomputed, saved, strict=True)]
        tensors = [f for f in flags if isinstance(f, torch.Tensor)]
        if any(f is True for f in flags):
            return True
        return torch.stack(tensors).any() if tensors else False
    return recomputed != saved


def dmr_mismatch(recomputed: Any, saved: Any, exact: bool) -> str | None:
    """None when a DMR re-computation agrees with the saved output, else what differs."""
    if isinstance(saved, torch.Tensor):
        if not isinstance(recomputed, torch.Tensor) or recomputed.shape != saved.shape:
            return "re-computed value has another type or shape"
        if torch.equal(recomputed, saved):
            return None
        if not exact and recomputed.is_floating_point():
            scale = float(recomputed.abs().amax()) if recomputed.numel() else 0.0
            # a non-deterministic op (parallel reduction order) differs by a few ulps
            if bool(torch.isclose(recomputed, saved, rtol=1e-5, atol=1e-6 * scale + 1e-30).all()):
                return None
        diff = torch.nan_to_num((recomputed.double() - saved.double()).abs(), nan=float("inf"))
        n_bad = int((~(recomputed == saved)).sum())
        return f"{n_bad} element(s) differ, max |diff| {float(diff.max()):.3g}"
    if isinstance(saved, (tuple, list)):
        if not isinstance(recomputed, (tuple, list)) or len(recomputed) != len(saved):
            return "re-computed value has another structure"
        for r, s in zip(recomputed, saved, strict=True):
            msg = dmr_mismatch(r, s, exact)
            if msg:
                return msg
        return None
    return None if recomputed == saved else "re-computed value differs"


class DmrKind(Kind):
    """Re-computation: faults in the output's memory and in the layer's computation."""

    kind = CheckKind.DMR
    verifies = "the layer re-computed from its saved inputs equals its output"
    failure = "the re-computed layer differs from its output"
    covers = "flips in the output's memory and faults in the layer's computation"
    on_device = "re-computed on the side stream; bit-exact tensor DMRs of a group in one fused " \
        "compare per dtype (one flag), the others one flag each"
    redundant = True
    fused_detail = "fused bit-exact compare of the group"

    def describe_check(self, c: LayerCheck) -> str:
        return f"{c.name}: {self.name} {'exact' if c.exact else 'tol'} ({c.reason})"

    # ---- plan entry ----------------------------------------------------------------------
    def enter(self, c: LayerCheck, ctx: PlanContext, ta: Any) -> None:
        """Re-compute through producers where needed; probe exactness; measure the cost."""
        values = ctx.values
        through_producers(c, ctx.inst, values)
        saved = values[c.index]
        again = c.recompute(values)
        c.exact = isinstance(again, torch.Tensor) and torch.equal(again, saved)
        cuda = isinstance(saved, torch.Tensor) and saved.is_cuda
        c.cost_s[self.name] = best_time(lambda: c.recompute(values), cuda=cuda)

    def chain(self, inst: Any, redundant: list[LayerCheck]) -> list[LayerCheck]:
        """Merge runs of exact DMR layers, each the only reader of the one before, into segments.

        A segment is re-computed from its first layer's saved inputs, each layer from the one
        re-computed before it, and compared once, at its last layer. A flip in an inner layer's
        output is caught when it changes the segment's output; one that the segment masks (e.g.
        a negative value made more negative before a ReLU) changes nothing any other layer
        reads, so the verified output is still the fault-free one, but it is not reported as a
        detection. Saves one compare per inner layer. Returns the checks to run.
        """
        by_index = {c.index: c for c in redundant}
        feeds: dict[int, LayerCheck] = {}  # layer -> the one DMR layer that alone reads it
        fed: set[int] = set()
        for c in redundant:
            if c.kind is not self.kind or not c.exact:
                continue
            users = list(inst.node_of(c.index).users)
            u = by_index.get(inst.index.get(users[0].name, -1)) if len(users) == 1 else None
            if u is not None and u.kind is self.kind and u.exact and u.index not in fed:
                feeds[c.index] = u
                fed.add(u.index)  # one feeder per layer: a segment is a path, not a tree
        out = []
        for c in redundant:
            if c.index in fed:
                continue  # compared at its segment's end
            seg = [c]
            while seg[-1].index in feeds:
                seg.append(feeds[seg[-1].index])
            if len(seg) == 1:
                out.append(c)
                continue
            tail = seg[-1]
            fns, idx = [m.recompute for m in seg], [m.index for m in seg[:-1]]

            def run(values: Sequence[Any], fns=fns, idx=idx) -> Any:
                local = list(values)
                for f, j in zip(fns, idx, strict=False):
                    local[j] = f(local)
                return fns[-1](local)

            for m in seg[:-1]:
                m.reason += f"; compared at {tail.name} (chained DMR)"
            tail.recompute, tail.head = run, seg[0].index
            tail.members = tuple(m.index for m in seg)
            tail.reason += f"; chained DMR from {seg[0].name} ({len(seg)} layers)"
            out.append(tail)
        return out

    # ---- eager check ---------------------------------------------------------------------
    def eager_check(self, c: LayerCheck, run: EagerRun) -> tuple[int, Detection] | None:
        """Re-compute and compare; a chained segment re-runs from its first layer."""
        values = run.values
        saved, again = values[c.index], c.recompute(values)
        # the common case, bit-equal tensors, without dmr_mismatch's call and type tests
        if again.__class__ is torch.Tensor and saved.__class__ is torch.Tensor \
                and torch.equal(again, saved):
            return None
        msg = dmr_mismatch(again, saved, c.exact)
        if not msg:
            return None
        return (c.index if c.head is None else c.head), Detection(c.name, c.name, self.name, msg)

    # ---- device check --------------------------------------------------------------------
    def device_batch(self, checks: Sequence[LayerCheck], values: Sequence[Any],
                     device: torch.device) -> FusedDmr | None:
        """The bit-exact, unchained tensor DMRs among `checks`, compared in one go."""
        fused = [c for c in checks if c.exact and c.head is None
                 and isinstance(values[c.index], torch.Tensor)
                 and values[c.index].dtype in bits.LAYOUTS]
        return FusedDmr(fused) if fused else None

    def device_check(self, c: LayerCheck, vals: Sequence[Any], inst: Any
                     ) -> torch.Tensor | bool:
        return dmr_differs(c.recompute(vals), vals[c.index], c.exact)


DMR = DmrKind()


class FusedDmr:
    """A group's bit-exact DMR layers: re-computed, one bit-exact compare per dtype."""

    detail = DMR.fused_detail

    def __init__(self, checks: Sequence[LayerCheck]) -> None:
        self.checks = list(checks)

    def launch(self, vals: Sequence[Any], keep: list) -> torch.Tensor:
        """Re-compute the layers; a device bool: any differs from its saved output."""
        by_dtype: dict[torch.dtype, tuple[list, list]] = {}
        for c in self.checks:
            again, saved = c.recompute(vals), vals[c.index]
            a, b = by_dtype.setdefault(saved.dtype, ([], []))
            a.append(bits.int_view(again.contiguous()).reshape(-1))
            b.append(bits.int_view(saved.contiguous()).reshape(-1))
        flags = [(torch.cat(a) != torch.cat(b)).any() for a, b in by_dtype.values()]
        out = flags[0] if len(flags) == 1 else torch.stack(flags).any()
        keep += [*flags, out, by_dtype]
        return out

    def localize(self, vals: Sequence[Any]) -> list[str]:
        """The layers behind a raised flag, re-compared one by one on the saved values."""
        return [c.name for c in self.checks
                if bool(dmr_differs(c.recompute(vals), vals[c.index], True))]


def through_producers(c: LayerCheck, inst: Any, values: Sequence[Any], depth: int = 3) -> None:
    """Make a DMR that would compare a memory with itself re-compute through its producers.

    A node that only selects or views its input (`getitem` of a multi-output layer such as
    `nn.MultiheadAttention`, whose tuple output has no check of its own; a reshape) re-computes
    to the very tensor it saved, so its DMR compares the memory with itself and sees no flip.
    Such a check re-computes the producer first (up to `depth` levels), then the node.
    """
    saved = values[c.index]
    if not aliases_input(c.recompute(values), [saved]):
        return
    chain, i = [], c.index
    for _ in range(depth):
        node = inst.node_of(i)
        src = next((n for n in node.all_input_nodes if n.name in inst.index), None)
        if src is None:
            break
        j = inst.index[src.name]
        if j in inst.placeholders:
            break
        chain.insert(0, j)

        def run(values: Sequence[Any], chain=tuple(chain), k=c.index) -> Any:
            local = list(values)
            for j in chain:
                local[j] = inst.recompute(j, local)
            return inst.recompute(k, local)

        if not aliases_input(run(values), [saved]):
            c.recompute = run
            c.reason += f"; re-computed through {inst.names[chain[0]]} (its own re-computation " \
                "would read the saved memory back)"
            return
        i = j
    c.reason += "; re-computation reads the saved memory back (a flip here is not seen)"
