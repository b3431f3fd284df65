"""The check kind as one object: what it verifies, its plan entry, its eager and device checks.

A `Kind` (one subclass and one instance per `CheckKind`, registered in `kinds.KINDS`) holds
everything about one kind of check, so that the planner, the eager checker, the CUDA program and
the reports dispatch through it instead of testing `CheckKind` members in many files:

- **description**: `verifies` (one line for reports), `failure` (what a failed check saw),
  `covers` (which faults of the fault model it catches), `on_device` (what it runs inside the
  CUDA program, or what runs there instead); `describe_failure(detail)` is the text of every
  detection of this kind, on both backends;
- **plan entry** (`core.verify.plan` calls them): `enter(c, ctx, ta)` fills a check that the
  planner made of this kind (bounds, re-computation, measured cost), `offer(c, ctx, ta)` takes a
  check over from a kind it `replaces` where it is eligible and chosen by its measured cost,
  `cost(c, ctx)` is that measured cost;
- **eager check** (`core.verify.checker`, on the values one inference saved): `eager_batch(run)`
  for kinds that compare all their layers at once, `eager_check(c, run)` for one layer;
- **device check** (`core.cuda.program`): `device_batch(checks, values, device)` (one flag for a
  group of layers), `device_check(c, vals, inst)` (one flag for one layer), or a program-wide
  part of the kind's own (memory sums, the input box, the weight sums);
- **reading a flag back**: a raised flag is a `Slot` (kind object + the layers it covers), and
  `slot.kind.detection(slot)` is its detection; no flag name is parsed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from save_ros.core.verify.checks import CheckKind, LayerCheck
from save_ros.core.verify.status import Detection, FaultStatus

Failures = list[tuple[int, Detection]]


def best_time(fn, reps: int = 15, cuda: bool = False) -> float:
    """Best-of wall time of one call (seconds); on CUDA, of the call and its kernels."""
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fn()
    sync()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def aliases_input(out: Any, ins: Sequence[Any]) -> bool:
    """True when `out` shares storage with one of the tensors in `ins` (a view)."""
    if not isinstance(out, torch.Tensor):
        return False
    ptr = out.untyped_storage().data_ptr()
    return any(isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() == ptr for v in ins)


@dataclass
class PlanContext:
    """What a kind's plan entry may read: the example run, the weights, the settings."""

    inst: Any  # core.instrument.Instrumented
    store: Any  # core.weights.WeightStore
    values: Sequence[Any]  # every node's value on the example run
    force: str  # ProtectConfig.checks
    robust_allowance: bool = True
    memory_checksums: bool = False

    def inputs_of(self, i: int) -> list[Any]:
        """The values node i reads."""
        inst = self.inst
        return [self.values[inst.index[n.name]] for n in inst.node_of(i).all_input_nodes]

    def owns_memory(self, i: int) -> bool:
        """Node i's output is memory of its own, not a view of what it reads."""
        return not aliases_input(self.values[i], self.inputs_of(i))


@dataclass
class EagerRun:
    """One pass of the eager layer checks over an inference's saved values (`LayerChecker.run`)."""

    plan: Any  # core.verify.plan.CheckPlan
    values: Sequence[Any]
    start: int  # layers before it are not checked (a re-run by Edit starts there)
    in_range: bool  # the input lay in its box
    st: FaultStatus
    inst: Any  # core.instrument.Instrumented
    sums: Any = None  # the inference's memory checksums (write, read), if it took them
    # a range-type alarm whose layer re-computes equal with golden weights is input-driven
    benign: Callable[[LayerCheck], bool] | None = None


@dataclass(frozen=True, eq=True)
class Slot:
    """One flag of a CUDA program, as what it checked: read back, it dispatches to its kind."""

    kind: Kind  # the kind whose check writes the flag
    label: str  # what a detection names: the layer, or the group ("range@12") for a group flag
    layers: tuple[str, ...] = ()  # every layer the flag covers
    detail: str = ""  # how the device checked, appended to the kind's failure text

    def detection(self) -> Detection | None:
        """The detection a raised flag reports (None: reported otherwise, see the kind)."""
        return self.kind.detection(self)


# every kind object, by its CheckKind: filled as the kind modules define their instances
# (`kinds/__init__` imports them all; `KINDS` there is this registry in CheckKind order)
REGISTRY: dict[CheckKind, Kind] = {}


class UnknownKindError(KeyError):
    """A CheckKind member without a kind object (add one in core/verify/kinds/)."""


def kind_of(what: LayerCheck | CheckKind | str) -> Kind:
    """The kind object of a check, a CheckKind or a kind's name."""
    key = what.kind if isinstance(what, LayerCheck) else CheckKind(what)
    try:
        return REGISTRY[key]
    except KeyError:
        raise UnknownKindError(f"check kind {key.value!r} has no kind object; define one in "
                               "save_ros/core/verify/kinds/ and import it there") from None


class Kind:
    """One check kind (see the module docstring); subclasses override what they run."""

    kind: CheckKind
    verifies: str = ""  # one line for reports
    failure: str = ""  # what a failed check of this kind saw
    covers: str = ""  # which faults of the fault model it catches
    on_device: str = ""  # its check inside the CUDA program, or what runs there instead
    input_error: bool = False  # a failure means the input is bad: rejected, never a fault
    confirmable: bool = False  # a failure may be the input's doing (re-computed to confirm)
    redundant: bool = False  # re-computes from saved values (kept for it; redundancy budget)
    forceable: bool = True  # ProtectConfig.checks may force it
    replaces: tuple[CheckKind, ...] = ()  # kinds whose checks `offer` may take over

    def __init__(self) -> None:
        if self.kind in REGISTRY:
            raise ValueError(f"check kind {self.name!r} has a kind object already")
        REGISTRY[self.kind] = self

    @property
    def name(self) -> str:
        """The kind's name in reports, detections and `ProtectConfig.checks`."""
        return self.kind.value

    def __repr__(self) -> str:
        return f"<check kind {self.name}>"

    # ---- description -------------------------------------------------------------------
    def describe_failure(self, detail: str = "") -> str:
        """The text of a failed check of this kind, with the backend's detail appended."""
        return f"{self.failure}: {detail}" if detail else self.failure

    def describe_check(self, c: LayerCheck) -> str:
        """One line for reports: layer, check, why."""
        return f"{c.name}: {self.name} ({c.reason})"

    def detection(self, slot: Slot) -> Detection | None:
        """The detection of a raised device flag of this kind."""
        return Detection(slot.label, slot.label, self.name, self.describe_failure(slot.detail))

    # ---- plan entry --------------------------------------------------------------------
    def enter(self, c: LayerCheck, ctx: PlanContext, ta: Any) -> None:
        """Fill `c`, which the planner made of this kind, with what its check needs."""

    def offer(self, c: LayerCheck, ctx: PlanContext, ta: Any) -> None:
        """Take `c` over from a kind in `replaces` where eligible and cheaper (default: never)."""

    def cost(self, c: LayerCheck, ctx: PlanContext) -> float | None:
        """Measured seconds of `c`'s check of this kind on the device that runs it."""
        return c.cost_s.get(self.name)

    # ---- eager check -------------------------------------------------------------------
    def eager_batch(self, run: EagerRun) -> Failures:
        """Failures of this kind's checks that run together (default: none run together)."""
        return []

    def eager_check(self, c: LayerCheck, run: EagerRun) -> tuple[int, Detection] | None:
        """One layer's check on the saved values: None when it passes, else (the layer to
        re-run from, the detection)."""
        raise NotImplementedError(f"the {self.name} kind has no per-layer eager check")

    # ---- device check ------------------------------------------------------------------
    def device_batch(self, checks: Sequence[LayerCheck], values: Sequence[Any],
                     device: torch.device) -> Any:
        """A part of a CUDA program that checks several layers under one flag, or None.

        It has `checks` (those it took), `detail`, `launch(vals, keep) -> device bool`
        and `localize(vals) -> layer names`."""
        return None

    def device_check(self, c: LayerCheck, vals: Sequence[Any], inst: Any
                     ) -> torch.Tensor | bool:
        """One layer's check as a device bool (no host sync): True where it fails."""
        raise NotImplementedError(f"the {self.name} kind has no per-layer device check")
