"""What a verdict says: `FaultStatus` for one inference, `Detection` for one failed check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Detection:
    """One failed check: where, which tensor, which check, and what it saw."""

    layer: str
    tensor: str
    check: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        """Plain data for JSON and ROS messages."""
        return {"layer": self.layer, "tensor": self.tensor, "check": self.check,
                "detail": self.detail}


@dataclass
class FaultStatus:
    """The verdict on one inference: checked, faulty or not, what was repaired, how long it took.

    `verified` is True when every planned check passed (after repair, if one was needed) and the
    input lay inside the declared range; the result is then the fault-free one (bit-exact where
    checks are exact, else within the stated ABFT tolerance). With a weight-check schedule other
    than every inference (`weight_check_interval` > 1 or `weight_check_budget_s`), a weight flip
    that no layer check sees stays unseen until its chunk's turn (`weights_checked` says whether
    this inference had one). `output` holds the corrected output when Edit re-ran part of the
    model, else None (the immediate output was right).
    """

    inference_id: int
    verified: bool = False
    input_out_of_range: bool = False
    detections: list[Detection] = field(default_factory=list)
    repaired: dict[str, int] = field(default_factory=dict)  # tensor -> elements restored
    rerun_from: str | None = None
    output: torch.Tensor | None = None
    checks_run: int = 0
    weights_checked: bool = False
    notes: list[str] = field(default_factory=list)  # benign events (range excursions confirmed)
    forward_s: float = 0.0  # the inference itself
    queue_s: float = 0.0  # waiting for the verifier
    verify_s: float = 0.0  # the checks
    repair_s: float = 0.0  # restore + re-run + re-check
    detection_latency_s: float | None = None  # inference start -> verdict, when faulty
    error: str | None = None  # the verifier itself failed (the result is then unverified)
    # a weight restore (recover, reanalyze, another inference's repair) overlapped this
    # inference: "verified": it changed no weight, the checks ran against the weights the
    # inference used; "rerun": weights changed under it, re-run from their first reader
    restore_overlap: str = ""

    @property
    def faulty(self) -> bool:
        """True when any check failed (a fault was detected)."""
        return bool(self.detections)

    @property
    def repaired_ok(self) -> bool:
        """True when a fault was detected and the repaired result passed its checks."""
        return self.faulty and self.verified

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON and ROS messages (without the output tensor)."""
        return {
            "inference_id": self.inference_id, "verified": self.verified,
            "input_out_of_range": self.input_out_of_range,
            "detections": [d.to_dict() for d in self.detections],
            "repaired": dict(self.repaired), "rerun_from": self.rerun_from,
            "checks_run": self.checks_run, "weights_checked": self.weights_checked,
            "notes": list(self.notes), "forward_s": self.forward_s, "queue_s": self.queue_s,
            "verify_s": self.verify_s, "repair_s": self.repair_s,
            "detection_latency_s": self.detection_latency_s, "error": self.error,
            "restore_overlap": self.restore_overlap,
        }
