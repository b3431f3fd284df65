"""SAVE Verification: every inference checked off the inference thread, with a verdict.

`status` (what a verdict says: `FaultStatus`, `Detection`), `checks` (`CheckKind` and the
per-layer record `LayerCheck`), `kinds` (one object per check kind: its description, plan
entry, eager check and check in the CUDA program), `memsum` (bit sums of memory), `plan` (which
check each layer gets, by measured cost: `plan_checks` -> `CheckPlan`), `checker` (the layer
checker loop over one inference's saved values) and `verifier` (the queue and who drains it: a
thread of its own, or an external caller).
"""

from save_ros.core.verify.status import Detection, FaultStatus
from save_ros.core.verify.verifier import Job, Verifier, VerifierMode

__all__ = ["Detection", "FaultStatus", "Job", "Verifier", "VerifierMode"]
