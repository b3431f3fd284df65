"""What an injection changed: one `FlipRecord` per bit, and the `UndoLog` that restores them.

Records are exact: `old_bits` / `new_bits` are the element's unsigned bit patterns before and
after (bit 0 = least significant), so undo writes the old pattern back bit-for-bit, whatever the
value was (NaN payloads and -0.0 included), and replay can check it meets the same bits again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from save_ros.core import bits


class UndoMismatchError(RuntimeError):
    """A tensor named in an undo log is missing or has another shape or dtype."""


@dataclass(frozen=True)
class FlipRecord:
    """One bit of one element changed by an injection (a flip, or a stuck-at that forced it)."""

    tensor: str  # weight name (`conv1.weight`) or activation site (module path)
    flat_index: int  # index into the contiguous tensor (batch included for activations)
    bit: int  # 0 = least significant
    old_bits: int  # unsigned pattern of the whole element before
    new_bits: int  # unsigned pattern after
    old_value: float | int
    new_value: float | int
    dtype: str | None = None  # "float32", ...: undo refuses a tensor of another dtype

    @property
    def changed(self) -> bool:
        """False when a stuck-at met a bit that already had the forced value."""
        return self.old_bits != self.new_bits

    def to_dict(self) -> dict:
        """A JSON-safe dict (non-finite values as strings, as JSON has no NaN)."""
        d = asdict(self)
        for key in ("old_value", "new_value"):
            v = d[key]
            if isinstance(v, float) and not math.isfinite(v):
                d[key] = repr(v)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> FlipRecord:
        """Inverse of `to_dict`."""
        vals = {k: (float(d[k]) if isinstance(d[k], str) else d[k]) for k in ("old_value",
                                                                           "new_value")}
        return cls(str(d["tensor"]), int(d["flat_index"]), int(d["bit"]), int(d["old_bits"]),
                   int(d["new_bits"]), vals["old_value"], vals["new_value"], d.get("dtype"))


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.float32` -> "float32" (what a FlipRecord stores)."""
    return str(dtype).removeprefix("torch.")


def check_record(r: FlipRecord, t: torch.Tensor) -> None:
    """Raise UndoMismatchError unless record `r` fits tensor `t` (dtype, index, bit, pattern)."""
    layout = bits.layout_of(t.dtype)
    if r.dtype is not None and r.dtype != dtype_name(t.dtype):
        raise UndoMismatchError(
            f"{r.tensor!r} was {r.dtype} when the faults were recorded and is "
            f"{dtype_name(t.dtype)} now; undo onto the model in the dtype it had")
    if r.old_bits >= 1 << layout.width or r.new_bits >= 1 << layout.width \
            or r.bit >= layout.width:
        raise UndoMismatchError(
            f"{r.tensor!r} holds {layout.width}-bit {dtype_name(t.dtype)} elements; the record "
            f"(bit {r.bit}, pattern {r.old_bits:#x}) is of a wider dtype")
    if not 0 <= r.flat_index < t.numel():
        raise UndoMismatchError(f"undo log index {r.flat_index} out of range for {r.tensor!r} "
                                f"({t.numel()} elements)")


def tensors_of(target: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Name -> tensor for a module (parameters and buffers) or a mapping given as is."""
    if isinstance(target, nn.Module):
        named = dict(target.named_parameters())
        named.update(target.named_buffers())
        return {k: v.detach() for k, v in named.items()}
    return {k: v.detach() for k, v in target.items()}


def read_patterns(t: torch.Tensor, idx: torch.Tensor) -> list[int]:
    """Unsigned bit patterns of the elements at flat `idx` of `t`."""
    layout = bits.layout_of(t.dtype)
    raw = bits.int_view(t).reshape(-1)[idx].to(torch.int64)
    return (raw & ((1 << layout.width) - 1)).tolist()


def write_patterns(t: torch.Tensor, idx: torch.Tensor, patterns: list[int]) -> None:
    """Write unsigned bit patterns into the elements at flat `idx` (unique indices) of `t`."""
    layout = bits.layout_of(t.dtype)
    signed = torch.tensor(patterns, dtype=torch.int64)
    if layout.int_dtype != torch.uint8:
        signed = torch.where(signed >= 1 << (layout.width - 1), signed - (1 << layout.width),
                             signed)
    bits.int_view(t).view(-1)[idx] = signed.to(layout.int_dtype)


@dataclass
class UndoLog:
    """The records of one injection, in the order they were applied."""

    records: list[FlipRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[FlipRecord]:
        return iter(self.records)

    def extend(self, records: Iterable[FlipRecord]) -> None:
        """Append records (kept in application order)."""
        self.records.extend(records)

    def tensors(self) -> list[str]:
        """Names of the tensors touched, in first-touch order."""
        return list(dict.fromkeys(r.tensor for r in self.records))

    def undo(self, model: nn.Module | Mapping[str, torch.Tensor]) -> None:
        """Restore every touched element bit-for-bit, as if the records were undone in reverse.

        Writes the oldest pattern of each element back (not an XOR), so undo is also right after
        something else (a SAVE repair) already restored the element; it empties the log.
        Every record is checked against the model first (tensor present, same dtype, index in
        range): on a mismatch `UndoMismatchError` is raised and nothing is written.
        """
        named = tensors_of(model)
        oldest: dict[str, dict[int, int]] = {}
        for r in reversed(self.records):  # the earliest record of an element wins
            if r.tensor not in named:
                raise UndoMismatchError(
                    f"undo log names tensor {r.tensor!r}, which the model does not have; "
                    "undo with the model (or tensor mapping) the faults were injected into"
                )
            check_record(r, named[r.tensor])
            oldest.setdefault(r.tensor, {})[r.flat_index] = r.old_bits
        with torch.no_grad():
            for name, per_index in oldest.items():
                idx = torch.tensor(list(per_index), dtype=torch.int64)
                write_patterns(named[name], idx, list(per_index.values()))
        self.records.clear()

    def to_json(self) -> str:
        """The records as a JSON document."""
        return json.dumps({"records": [r.to_dict() for r in self.records]})

    @classmethod
    def from_json(cls, text: str) -> UndoLog:
        """Inverse of `to_json`."""
        return cls([FlipRecord.from_dict(d) for d in json.loads(text)["records"]])

    def save(self, path: str | Path) -> None:
        """Write the log as JSON."""
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> UndoLog:
        """Read a log written by `save`."""
        return cls.from_json(Path(path).read_text())
