"""The `none` kind: a layer that needs no check of its own.

Its bits are robust only, its output lies in reliable memory, it has no float tensor output, it
returns or views its input (checked where that is produced), or `checks="none"` disabled checks.
It runs nothing, eagerly or in the CUDA program, and never fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from save_ros.core.verify.checks import CheckKind, LayerCheck
from save_ros.core.verify.kinds.base import EagerRun, Kind
from save_ros.core.verify.status import Detection


class NoneKind(Kind):
    """No check: nothing of this layer can change the result, or it cannot flip."""

    kind = CheckKind.NONE
    verifies = "nothing (robust bits only, reliable memory, or no tensor)"
    failure = "never fails"
    covers = "nothing: no bit of it can change the result, or it cannot flip"
    on_device = "nothing (no flag)"

    def eager_check(self, c: LayerCheck, run: EagerRun) -> tuple[int, Detection] | None:
        return None

    def device_check(self, c: LayerCheck, vals: Sequence[Any], inst: Any
                     ) -> torch.Tensor | bool:
        return False


NONE = NoneKind()
