"""The per-layer check record of SAVE Verification: which kind a layer gets, and its data.

`CheckKind` names the kinds; each has one kind object (`core.verify.kinds`) that holds its
plan entry, its eager check, its check in the CUDA program and its description. A `LayerCheck`
is what the planner decided for one layer and what the kind's checks read at run time.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


class CheckKind(str, enum.Enum):
    """Which check a layer gets (each member has its kind object in `core.verify.kinds`)."""

    NONE = "none"  # robust bits only, the output lives in reliable memory, or no tensor output
    RANGE = "range"  # ranging bits: min/max against the analysed range
    DMR = "dmr"  # vulnerable bits: re-compute from the saved input and compare
    ABFT = "abft"  # vulnerable bits of linear/conv: checksum of golden weights
    CHECKSUM = "checksum"  # memory flips: bit sum when written vs after the last read
    WEIGHTS = "weights"  # checksums of weights in normal memory (not a layer check)
    INPUT = "input"  # the model input against the declared input range


@dataclass
class LayerCheck:
    """The check planned for one layer and everything it needs at run time."""

    index: int  # position of the layer's node in the runtime's value tuple
    name: str  # fx node name = activation name
    kind: CheckKind
    reason: str  # why this check (for the report)
    recompute: Callable[[Sequence[Any]], Any] | None = None  # layer from saved values
    exact: bool = True  # DMR: compare bit-exactly (the op is deterministic here)
    range_low: torch.Tensor | None = None  # RANGE: scalar or per-channel bounds
    range_high: torch.Tensor | None = None
    channel_dim: int | None = None
    range_source: str = ""
    abft: Any = None  # ABFT: its `kinds.abft.AbftCheck` (golden column sums)
    cost_s: dict[str, float] = field(default_factory=dict)  # measured per-check cost
    # chained DMR (`ProtectConfig.chain_dmr`): the first layer of the re-computed segment this
    # check compares at its end, and every layer of that segment (else None / empty)
    head: int | None = None
    members: tuple[int, ...] = ()
