"""`UnknownZooModelError`: a name that is none of the zoo's architectures or policies."""

from __future__ import annotations

from save_ros.errors import UserError


class UnknownZooModelError(UserError, KeyError):
    """A name that is not one of the zoo's architectures."""

    def __str__(self) -> str:
        return str(self.args[0])
