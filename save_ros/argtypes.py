"""argparse for the `save-ros` verbs: bounded numbers, comma-separated lists, `python -m` mains.

Each type raises `argparse.ArgumentTypeError` saying what it expected, so a bad value is one line
of `save-ros VERB: error: ...` before anything runs. `standalone` gives a verb's module its
`python -m` entry point. Imports nothing of save_ros.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any


def _bounded(text: str, kind: type, want: str, ok: Callable[[Any], bool]) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
    if not ok(value):  # NaN fails every comparison, so it lands here too
        raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _bounded(text, int, "an integer >= 1", lambda v: v >= 1)


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    return _bounded(text, int, "an integer >= 0", lambda v: v >= 0)


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _bounded(text, float, "a finite number > 0", lambda v: 0 < v < math.inf)


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    return _bounded(text, float, "a finite number >= 0", lambda v: 0 <= v < math.inf)


def fraction(text: str) -> float:
    """A finite number >= 0, e.g. a share of the weight bytes (0.05)."""
    return _bounded(text, float, "a fraction >= 0 like 0.05", lambda v: 0 <= v < math.inf)


def comma_list(item: Callable[[str], Any], want: str) -> Callable[[str], tuple]:
    """A type for "a,b,c": each part through `item`, at least one; `want` names an example."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(item(v.strip()) for v in text.split(",") if v.strip())
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return values
    return parse


int_list = comma_list(int, "comma-separated integers like 1,16,256")
float_list = comma_list(float, "comma-separated numbers like 1e-7,1e-6")
name_list = comma_list(str, "comma-separated names like save,unprotected")
positive_int_list = comma_list(positive_int, "comma-separated integers >= 1 like 1,8")
fraction_list = comma_list(fraction, "fractions >= 0 like 0,0.05,0.1")


def bit_list(text: str) -> tuple[int, ...]:
    """Bit positions: "30,31" or a range "23-30" (0 = least significant)."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            if int(hi or lo) < int(lo):  # "30-23" would select no bit at all
                raise ValueError(part)
            out.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        msg = f"expected bits like 30,31 or 23-30 (low-high), got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    return tuple(out)


def standalone(add_arguments: Callable[[argparse.ArgumentParser], None],
               run: Callable[[argparse.Namespace], int], doc: str | None,
               prog: str | None = None) -> Callable[[Sequence[str] | None], int]:
    """`main(argv)` for `python -m` of a verb's module: its options, then `run(args)`."""
    def main(argv: Sequence[str] | None = None) -> int:
        parser = argparse.ArgumentParser(prog=prog, description=(doc or "").splitlines()[0])
        add_arguments(parser)
        return int(run(parser.parse_args(argv)) or 0)
    return main
