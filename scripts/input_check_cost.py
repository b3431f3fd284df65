"""The cost of refusing bad input before inference: `ModelInputs.check_values` (one min / max
reduction per input) against the elementwise clamp + equal the checker used before, side by side
in one process on one thread, for a 224 x 224 image (+ a joint state) at batch 1 and 8.

Usage: python scripts/input_check_cost.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import timeit

import torch
from torch import nn

from save_ros.core.box import InputBox
from save_ros.core.inputs import ModelInputs


class _Policy(nn.Module):
    def forward(self, image: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
        return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for batch in (1, 8):
        x = torch.rand(batch, 3, 224, 224)
        j = torch.rand(batch, 7) * 2 - 1
        spec = ModelInputs.of(_Policy(), (x, j), ((0.0, 1.0), (-1.0, 1.0)))
        box = InputBox.of((0.0, 1.0), x.shape[1:])
        def old(box=box, x=x) -> bool:  # the clamp + equal of the checker before
            return box.contains(x)

        def new(spec=spec, x=x, j=j) -> None:
            spec.check_values(spec.normalize((x, j)))

        times: dict[str, list[float]] = {"clamp_equal_us": [], "check_values_us": []}
        for _ in range(7):  # interleaved: the machine's load hits both alike
            for key, fn in (("clamp_equal_us", old), ("check_values_us", new)):
                fn()
                times[key].append(min(timeit.repeat(fn, number=20, repeat=3)) / 20 * 1e6)
        row = {"batch": batch, **{k: sorted(v)[len(v) // 2] for k, v in times.items()}}
        row["ratio"] = row["clamp_equal_us"] / row["check_values_us"]
        rows.append(row)
        print(f"batch {batch}: clamp+equal {row['clamp_equal_us']:8.1f} us, check_values "
              f"(image + joints) {row['check_values_us']:8.1f} us, {row['ratio']:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "torch": torch.__version__, "machine": platform.machine(),
                       "date": time.strftime("%Y-%m-%d", time.gmtime()), "threads": 1}, f,
                      indent=1)


if __name__ == "__main__":
    main()
