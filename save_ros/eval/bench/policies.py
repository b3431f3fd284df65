"""The zoo's policies, unprotected: parameters, build time and forward time per dtype.

`save-ros bench policies` builds each policy (seeded init, fp32, converted to bf16 / fp16), runs
its example inputs at batch 1 and reports the median of `--reps` timed forwards after one
warm-up (wall time, and the process's CPU time over all its threads, which a machine shared
with other jobs inflates less), plus whether two runs on the same inputs give the same bits.
Parameters are counted on the meta device (nothing allocated). The 415M `rdt_policy` is built
only when `--models` names it. Times compare dtypes and models on one machine in one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from save_ros.argtypes import positive_int

DEFAULT_MODELS = "decision_transformer,visuomotor,rdt_policy_tiny"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(name: str, dtypes: list[str], reps: int, device: str = "cpu") -> dict:
    """One policy: parameters, build seconds, and per dtype median forward ms (or the error)."""
    from save_ros.models import zoo
    from save_ros.models.zoo import policies

    row: dict = {"parameters": policies.parameter_count(name), "dtypes": {}}
    start = time.perf_counter()
    base = zoo.build_policy(name)
    row["build_s"] = round(time.perf_counter() - start, 3)
    for key in dtypes:
        dtype = DTYPES[key]
        try:
            model = (base if dtype == torch.float32
                     else zoo.build_policy(name, dtype=dtype)).to(device)
            inputs = tuple(x.to(device) for x in zoo.example_inputs(name, batch=1, dtype=dtype))
            times, cpu = [], []
            with torch.inference_mode():
                first = model(*inputs)
                for _ in range(reps):
                    _sync(device)
                    t0, c0 = time.perf_counter(), time.process_time()
                    out = model(*inputs)
                    _sync(device)
                    times.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
            row["dtypes"][key] = {"forward_ms_median": round(1e3 * statistics.median(times), 2),
                                  "process_cpu_ms_median": round(1e3 * statistics.median(cpu),
                                                                 2),
                                  "repeat_bit_exact": bool(torch.equal(first, out)),
                                  "output_shape": list(out.shape)}
        except (RuntimeError, NotImplementedError) as exc:  # an op without a kernel in dtype
            row["dtypes"][key] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
    return row


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `save-ros bench policies`."""
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help="zoo policy names, comma-separated (rdt_policy: 415M, ~2 GB)")
    parser.add_argument("--dtypes", default="fp32,bf16,fp16")
    parser.add_argument("--reps", type=positive_int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")


def run(args: argparse.Namespace) -> int:
    """Measure and print one line per policy and dtype."""
    from save_ros.models import zoo

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [n for n in names if n not in zoo.available_policies()] + \
        [d for d in dtypes if d not in DTYPES]
    if bad:
        print(f"bench policies: unknown {', '.join(bad)}; policies: "
              f"{', '.join(zoo.available_policies())}; dtypes: {', '.join(DTYPES)}",
              file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench policies: skipped: --device cuda but this torch sees no CUDA device")
        return 0
    import os

    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": 1,
              "load_average_1min": round(os.getloadavg()[0], 2),
              "command": "save-ros bench policies " + " ".join(sys.argv[3:]
                                                              if sys.argv[1:2] == ["bench"]
                                                              else sys.argv[1:]),
              "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
              "reps": args.reps, "date": time.strftime("%Y-%m-%d", time.gmtime()),
              "models": {}}
    for name in names:
        row = measure(name, dtypes, args.reps, args.device)
        result["models"][name] = row
        for key, d in row["dtypes"].items():
            what = d.get("error") or (f"{d['forward_ms_median']:9.2f} ms wall "
                                      f"{d['process_cpu_ms_median']:9.2f} ms CPU  bit-exact "
                                      f"repeat {d['repeat_bit_exact']}")
            print(f"{name:22s} {row['parameters']:>12,d} params  {key}  {what}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m save_ros.eval.bench.policies`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
