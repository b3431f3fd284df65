"""Check kinds as objects: one per `CheckKind`, each holding everything about its check.

Each kind (`base.Kind`) holds its description, its plan entry, its eager check and its check in
the CUDA program (`base` says what each of those is); one module per kind:

    none       nothing to check (robust, reliable, or no float tensor)
    range      every element within its channel's analysed range
    dmr        the layer re-computed from its saved inputs equals its output
    abft       linear / conv: output sum against the golden weights' column sums
    checksum   an activation's bit sum when written equals its sum after the last read
    weights    chunk sums of the weights against the golden sums
    input      the input within its declared box (an input error, not a fault)

`KINDS` maps every `CheckKind` to its object, in `CheckKind` order (the planner offers a layer
to the kinds in that order, so a later kind may take a check over from an earlier one);
`kind_of(check | CheckKind | name)` finds one; `describe_failure(kind, detail)` is what every
backend prints for a failed check. A new `CheckKind` member needs a kind object here
(`test/test_check_kinds.py` fails without one).
"""

from __future__ import annotations

from save_ros.core.verify.checks import CheckKind
from save_ros.core.verify.kinds.abft import ABFT
from save_ros.core.verify.kinds.base import REGISTRY, Kind, Slot, UnknownKindError, kind_of
from save_ros.core.verify.kinds.checksum import CHECKSUM
from save_ros.core.verify.kinds.dmr import DMR
from save_ros.core.verify.kinds.input import INPUT
from save_ros.core.verify.kinds.none import NONE
from save_ros.core.verify.kinds.range import RANGE
from save_ros.core.verify.kinds.weights import WEIGHTS

KINDS: dict[CheckKind, Kind] = {k: REGISTRY[k] for k in CheckKind if k in REGISTRY}
# the kinds whose eager checks compare all their layers at once, in the order the checker runs
# them (memory sums first: no re-computation); per-layer checks follow, in layer order
EAGER_BATCHES: tuple[Kind, ...] = (CHECKSUM, RANGE)
# what `ProtectConfig.checks` accepts: "auto" and every kind a layer can be forced to
FORCE_KINDS: tuple[str, ...] = ("auto", *(k.name for k in KINDS.values() if k.forceable))


def describe_failure(kind: CheckKind | str, detail: str = "") -> str:
    """The text of a failed check of `kind`, with the backend's detail appended."""
    return kind_of(kind).describe_failure(detail)


__all__ = ["ABFT", "CHECKSUM", "DMR", "EAGER_BATCHES", "FORCE_KINDS", "INPUT", "KINDS", "NONE",
           "RANGE", "WEIGHTS", "Kind", "Slot", "UnknownKindError", "describe_failure", "kind_of"]
