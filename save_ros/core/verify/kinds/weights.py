"""The `weights` kind: chunk sums of the weights in normal memory against the golden sums.

Not a layer check: the weights live in one flat buffer per dtype (`core.weights.WeightStore`).

- plan entry: none (`ProtectConfig.weight_check_interval` / `weight_check_budget_s` schedule it;
  Allocation counts every weight as covered when each inference checks them all);
- eager check (`eager_store`): the scheduled window of chunk sums; any failing chunk has every
  weight compared with its golden copy and restored (flips that cancel in a chunk's sum hide
  there only while no other flip shows), one detection per repaired weight;
- device check (`device_flag`): per dtype group the 64-bit chunk sums of the flat buffer against
  the golden sums, once the forward is done (a flip that lands during the forward is then seen
  whenever the forward could have read it); a raised flag is reported by the repair that
  follows (which weight, how many elements), not by the flag itself.
"""

from __future__ import annotations

from typing import Any

import torch

from save_ros.core.verify.checks import CheckKind
from save_ros.core.verify.kinds.base import Failures, Kind
from save_ros.core.verify.status import Detection, FaultStatus


class WeightsKind(Kind):
    """Every weight flip before the verdict, by chunk sums against the golden sums."""

    kind = CheckKind.WEIGHTS
    verifies = "chunk sums of the weights in normal memory equal the golden sums"
    failure = "a weight chunk's checksum differs from the golden sum"
    covers = "every weight flip before the verdict"
    on_device = "per dtype group one flag: chunk sums against golden sums after the forward " \
        "(in the forward's graph, or a graph of its own replayed when due)"
    forceable = False

    def repaired(self, layer: str, name: str, n: int) -> Detection:
        """The detection of a weight the repair found different from its golden copy."""
        return Detection(layer, name, self.name, f"{n} element(s) differ from the golden copy")

    def eager_store(self, store: Any, editor: Any, plan: Any, inst: Any,
                    window: tuple[int, int | None], st: FaultStatus) -> Failures:
        """Check the scheduled chunks; on a failure restore every weight that differs."""
        st.weights_checked = True
        lo, hi = window
        if not store.check(lo=lo, hi=hi):
            return []
        # compare everything exactly, not only the failing chunks: flips that cancel in
        # a chunk's sum (same bit, opposite directions) hide there only while no other
        # flip shows, so one visible flip is enough to find them all
        fails = []
        rep = editor.restore(None)
        for name, n in rep.elements.items():
            k = editor.first_reader(plan, [name])
            fails.append((k, self.repaired(inst.names[k], name, n)))
            st.repaired[name] = st.repaired.get(name, 0) + n
        return fails

    def device_flag(self, group: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(device bool: a chunk sum of the group differs from its golden sum, the sums)."""
        sums = group._live_words.sum(1)
        return (sums != group.golden_sums).any(), sums

    def detection(self, slot):
        return None  # reported by the repair: which weight, how many elements


WEIGHTS = WeightsKind()
