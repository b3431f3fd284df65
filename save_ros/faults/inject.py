"""Weight faults: applied in place, persistent until `UndoLog.undo` restores them bit-for-bit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from save_ros.core import bits
from save_ros.errors import UserError
from save_ros.faults.faultmodels import BitFault, FaultOp, MemoryFaultModel
from save_ros.faults.records import (
    FlipRecord,
    UndoLog,
    UndoMismatchError,
    check_record,
    dtype_name,
    read_patterns,
    tensors_of,
)
from save_ros.faults.targets import Target, TargetKind, select_weights, weight_sites


class ReplayMismatchError(UserError, RuntimeError):
    """A replayed record met other bits than it recorded: not the model it was made on."""


def _values(t: torch.Tensor, idx: torch.Tensor) -> list:
    return t.reshape(-1)[idx].tolist()


def _check_group(name: str, t: torch.Tensor, group: Sequence[BitFault]) -> None:
    """Raise before anything is changed if a fault cannot apply to `t` (index, bit, layout)."""
    layout = bits.layout_of(t.dtype)  # UnsupportedDtypeError lists the supported dtypes
    if not t.is_contiguous():
        raise ValueError(f"tensor {name!r} is not contiguous; flat indices need contiguity")
    idx = [f.flat_index for f in group]
    if idx and (min(idx) < 0 or max(idx) >= t.numel()):
        bad = next(i for i in idx if not 0 <= i < t.numel())
        raise IndexError(f"fault index {bad} out of range for {name!r} ({t.numel()} elements); "
                         "nothing was injected")
    top = max(f.bit for f in group) if group else 0
    if top >= layout.width:
        raise bits.BitIndexError(f"bit {top} is outside {dtype_name(t.dtype)} tensor {name!r} "
                                 f"(bits 0..{layout.width - 1}); nothing was injected")


def _apply_group(name: str, t: torch.Tensor, group: Sequence[BitFault]) -> list[FlipRecord]:
    """Apply one tensor's faults in order (checked by `_check_group`); vectorised when no
    element is hit twice."""
    idx = torch.tensor([f.flat_index for f in group], dtype=torch.int64)
    if idx.numel() != torch.unique(idx).numel():
        # An element hit more than once: apply in waves (the k-th hit of every element in wave
        # k), so later faults on an element see the earlier ones and each wave stays vectorised.
        seen: dict[int, int] = {}
        wave = []
        for f in group:
            wave.append(seen.get(f.flat_index, 0))
            seen[f.flat_index] = wave[-1] + 1
        out: list[FlipRecord | None] = [None] * len(group)
        for k in range(max(wave) + 1):
            pos = [i for i, w in enumerate(wave) if w == k]
            for i, r in zip(pos, _apply_group(name, t, [group[i] for i in pos]), strict=True):
                out[i] = r
        return out  # type: ignore[return-value]
    bit_t = torch.tensor([f.bit for f in group], dtype=torch.int64)
    old_bits, old_vals = read_patterns(t, idx), _values(t, idx)
    for op in FaultOp:
        sel = [i for i, f in enumerate(group) if f.op is op]
        if not sel:
            continue
        s = torch.tensor(sel, dtype=torch.int64)
        if op is FaultOp.FLIP:
            bits.flip_(t, idx[s], bit_t[s])
        else:
            bits.set_bit_(t, idx[s], bit_t[s], 1 if op is FaultOp.SET1 else 0)
    new_bits, new_vals = read_patterns(t, idx), _values(t, idx)
    dt = dtype_name(t.dtype)
    return [FlipRecord(name, f.flat_index, f.bit, ob, nb, ov, nv, dt) for f, ob, nb, ov, nv in
            zip(group, old_bits, new_bits, old_vals, new_vals, strict=True)]


def apply_bit_faults(
    tensors: Mapping[str, torch.Tensor], faults: Sequence[BitFault]
) -> list[FlipRecord]:
    """Apply concrete faults to named tensors in place; records come back in fault order.

    All or nothing: every fault is checked (tensor present, index and bit in range) before the
    first is applied, and if applying still fails, what was applied is undone before the error
    propagates.
    """
    groups: dict[str, list[tuple[int, BitFault]]] = {}
    for pos, f in enumerate(faults):
        groups.setdefault(f.site, []).append((pos, f))
    for name, items in groups.items():
        if name not in tensors:
            raise KeyError(f"fault names tensor {name!r}, which is not among the targets; "
                           "nothing was injected")
        _check_group(name, tensors[name], [f for _, f in items])
    out: list[FlipRecord | None] = [None] * len(faults)
    done: list[FlipRecord] = []
    try:
        with torch.no_grad():
            for name, items in groups.items():
                recs = _apply_group(name, tensors[name], [f for _, f in items])
                done.extend(recs)
                for (pos, _), r in zip(items, recs, strict=True):
                    out[pos] = r
    except BaseException:
        UndoLog(done).undo(tensors)
        raise
    return out  # type: ignore[return-value]


def apply_weight_faults(
    model: nn.Module | Mapping[str, torch.Tensor], faults: Sequence[BitFault]
) -> UndoLog:
    """Apply concrete weight faults to a model (or name -> tensor mapping); return the undo log."""
    return UndoLog(apply_bit_faults(tensors_of(model), faults))


def sample_weight_faults(
    model: nn.Module | None,
    fault_model: MemoryFaultModel,
    target: Target = Target(),
    seed: int | torch.Generator = 0,
    tensors: Mapping[str, torch.Tensor] | None = None,
) -> list[BitFault]:
    """Draw concrete weight faults (nothing is changed yet)."""
    if target.kind is not TargetKind.WEIGHTS:
        raise ValueError("sample_weight_faults needs a Target(kind=TargetKind.WEIGHTS)")
    return fault_model.sample(weight_sites(select_weights(model, target, tensors)), seed)


def inject_weights(
    model: nn.Module | None,
    fault_model: MemoryFaultModel,
    target: Target = Target(),
    seed: int | torch.Generator = 0,
    tensors: Mapping[str, torch.Tensor] | None = None,
) -> UndoLog:
    """Draw and apply weight faults in place; `log.undo(model)` restores the weights.

    `tensors` (e.g. a method's `injectable()`) limits the pool to those tensors.
    """
    chosen = select_weights(model, target, tensors)
    faults = fault_model.sample(weight_sites(chosen), seed)
    return UndoLog(apply_bit_faults(chosen, faults))


def replay(model: nn.Module | Mapping[str, torch.Tensor], log: UndoLog) -> UndoLog:
    """Re-apply a saved log exactly: each element must hold its recorded old bits first.

    Returns the fresh log (equal to `log` on the same model), which undoes the replay.
    """
    named = tensors_of(model)
    for r in log.records:  # everything that can be checked up front, before any write
        if r.tensor not in named:
            raise ReplayMismatchError(f"the model has no tensor {r.tensor!r}; nothing was "
                                      "replayed")
        try:
            check_record(r, named[r.tensor])
        except UndoMismatchError as exc:
            raise ReplayMismatchError(f"{exc}; nothing was replayed") from None
    fresh = UndoLog()
    try:
        with torch.no_grad():
            for r in log.records:
                t = named[r.tensor]
                idx = torch.tensor([r.flat_index])
                now = read_patterns(t, idx)[0]
                if now != r.old_bits:
                    raise ReplayMismatchError(
                        f"{r.tensor}[{r.flat_index}] holds {now:#x}, the log expects "
                        f"{r.old_bits:#x}: replay on the same weights the log was recorded on"
                    )
                op = FaultOp.FLIP
                if not r.changed:  # a stuck-at that found its bit already set
                    op = FaultOp.SET1 if (r.new_bits >> r.bit) & 1 else FaultOp.SET0
                fresh.extend(apply_bit_faults(named, [BitFault(r.tensor, r.flat_index, r.bit,
                                                               op)]))
    except BaseException:  # all or nothing: a failed replay leaves the model as it was
        fresh.undo(named)
        raise
    return fresh
