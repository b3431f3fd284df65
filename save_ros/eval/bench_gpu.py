"""`save-ros bench-gpu`: unprotected vs SAVE-protected latency on CUDA, side by side, per config.

For every model x batch x dtype: unprotected eager and CUDA-graph latency, the protected model
(CUDA graph, checks on side streams, CPU verifier), its false alarms on fresh inputs, detection
latency and time to repair after an injected flip, and AccurateLatency under a stated fault rate.
Then, per model, a seeded weight-flip coverage campaign (`save_ros.gpu.campaign`); the campaign
and AccurateLatency are in `save_ros.eval.bench_gpu_faults`. Torchvision
architectures with random weights (seeded): timing does not depend on trained values.

Latency is measured per request, as a robot node sees it: submit, wait for the result on the
host (for the protected model: the verified result), host clock, many iterations, median. GPU time
of back-to-back replays is measured with CUDA events as well.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from save_ros.cli import nonnegative_int, positive_int
from save_ros.eval.bench_gpu_faults import accurate_latency, campaign
from save_ros.gpu import CudaUnavailableError, cuda_available

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# argparse types: they keep the comma-separated text run() splits, but refuse it up front, so a
# typo fails before the CUDA check and not as a KeyError after the first configurations ran
def dtype_list(text: str) -> str:
    """argparse type: comma-separated dtypes among DTYPES."""
    bad = [d for d in text.split(",") if d not in DTYPES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown dtype(s) {', '.join(map(repr, bad))}; "
                                         f"choose from {', '.join(DTYPES)}")
    return text


def batch_list(text: str) -> str:
    """argparse type: comma-separated batch sizes >= 1."""
    for b in text.split(","):
        positive_int(b)
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `save-ros bench-gpu`."""
    parser.add_argument("--model", default="resnet50,vit_b_16",
                        help="comma-separated torchvision model names")
    parser.add_argument("--batch", type=batch_list, default="1,8",
                        help="comma-separated batch sizes")
    parser.add_argument("--dtype", type=dtype_list, default="fp32,fp16",
                        help="comma-separated: fp32, fp16, bf16")
    parser.add_argument("--device", default="cuda", help="only cuda is benchmarked here")
    parser.add_argument("--iters", type=positive_int, default=200,
                        help="timed iterations per variant")
    parser.add_argument("--warmup", type=nonnegative_int, default=20)
    parser.add_argument("--fault-rate", type=float, default=1e-3,
                        help="weight flips per inference assumed for AccurateLatency")
    parser.add_argument("--variants", default="every=1;every=8;every=8,budget=0.35",
                        help="protected variants, ';'-separated: every=N (checksum rotation "
                             "over N inferences), budget=F (share of tap bytes checked)")
    parser.add_argument("--repairs", type=nonnegative_int, default=20,
                        help="injected flips timed per config")
    parser.add_argument("--trials", type=nonnegative_int, default=10000,
                        help="coverage campaign trials per model (0: no campaign)")
    parser.add_argument("--campaign-dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--campaign-time-limit", type=float, default=150.0,
                        help="seconds per model campaign at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the full results here")
    parser.add_argument("--breakdown", action="store_true",
                        help="only split the protected latency of each model x dtype (batch 1, "
                             "first variant) into its parts")


def _model(name: str) -> torch.nn.Module:
    """A torchvision architecture with seeded random weights."""
    try:
        import torchvision
    except ImportError as exc:
        raise SystemExit("save-ros bench-gpu needs torchvision (pip install torchvision)") from exc
    model = torchvision.models.get_model(name, weights=None)
    # torchvision zero-initialises ViT's classification head: every logit would be 0 whatever
    # the rest computes, hiding every upstream fault. Draw such all-zero weights at random.
    g = torch.Generator().manual_seed(1234)
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and not m.weight.detach().any():
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.02)
    return model


def _host_latency(fn, iters: int, warmup: int) -> dict:
    """Per-call host latency of fn() (which must synchronize): median and p90 in ms."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return {"median_ms": statistics.median(ts), "p90_ms": ts[int(0.9 * (len(ts) - 1))],
            "iters": iters}


def _gpu_time(fn, iters: int, warmup: int) -> float:
    """Mean GPU time per call of fn() back to back (CUDA events around `iters` calls), ms."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(iters):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / iters


def _capture(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """The unprotected model captured as a CUDA graph on `x` (its static input), and its output."""
    # warm up on a side stream first, as CUDA graph capture requires (lazy init, autotuning)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            model(x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = model(x)
    return g, out


def bench_config(name: str, batch: int, dtype: torch.dtype, args: argparse.Namespace) -> dict:
    """All latency figures of one model x batch x dtype."""
    from save_ros.core.bits import flip_
    from save_ros.gpu.runtime import CudaProtectedModel, GpuProtectConfig

    torch.manual_seed(args.seed)
    model = _model(name).eval().cuda().to(dtype)
    gen = torch.Generator(device="cuda").manual_seed(args.seed)
    shape = (batch, 3, 224, 224)
    x = torch.randn(shape, generator=gen, device="cuda", dtype=dtype)
    calib = [torch.randn(shape, generator=gen, device="cuda", dtype=dtype) for _ in range(8)]
    row: dict = {"model": name, "batch": batch, "dtype": str(dtype).removeprefix("torch.")}

    with torch.no_grad():
        def eager():
            model(x)
            torch.cuda.synchronize()
        row["eager"] = _host_latency(eager, args.iters // 2, args.warmup)
        static_x = x.clone()
        g, g_out = _capture(model, static_x)

        def graph():
            static_x.copy_(x)  # a node copies each new input into the graph's buffer
            g.replay()
            torch.cuda.synchronize()
        row["graph"] = _host_latency(graph, args.iters, args.warmup)
        row["graph"]["gpu_ms"] = _gpu_time(g.replay, args.iters, args.warmup)
        ref = g_out.clone()
    best = min(row["eager"]["median_ms"], row["graph"]["median_ms"])
    row["unprotected_best_ms"] = best
    row["unprotected_best"] = "graph" if row["graph"]["median_ms"] <= best else "eager"

    row["protected"] = {}
    for variant in args.variants.split(";"):
        kv = dict(item.split("=") for item in variant.split(","))
        every, budget = int(kv.get("every", 1)), float(kv.get("budget", 1.0))
        cfg = GpuProtectConfig(checksum_every=every, tap_budget=budget,
                               fused=bool(int(kv.get("fused", 1))))
        t0 = time.perf_counter()
        pm = CudaProtectedModel(model, x, cfg, calibration=calib)
        build_s = time.perf_counter() - t0
        r = pm.infer(x)
        same = bool(torch.equal(r.output, ref))
        p: dict = {"build_s": build_s, "output_equals_unprotected": same,
                   "backend": pm.backend.value, "checked_activations": len(pm.act_plan.names),
                   "skipped_taps": pm.skipped_taps, "activation_rows": pm.act_plan.n_chunks,
                   "weight_rows": pm.weight_plan.n_chunks, "range_sources": pm.range_sources,
                   "stat_groups": len(pm._act_reducers)}
        p["latency"] = _host_latency(lambda pm=pm: pm.infer(x), args.iters, args.warmup)
        p["latency"]["gpu_ms"] = _gpu_time(lambda pm=pm: pm._submit(pm._next_cs()),
                                           args.iters, args.warmup)
        p["fused"] = pm._fused is not None
        torch.cuda.synchronize()
        statuses = [pm.infer(x).status for _ in range(50)]
        p["verify_ms_median"] = statistics.median(s.detect_s for s in statuses) * 1e3
        # false alarms on fresh inputs from the calibration distribution
        alarms = 0
        for _ in range(100):
            xi = torch.randn(shape, generator=gen, device="cuda", dtype=dtype)
            alarms += bool(pm.infer(xi).status.detections)
        p["false_alarms"] = {"count": alarms, "n": 100}
        # injected single flips in the exponent MSB of a random weight: detect + repair
        names = pm.normal_tensors()
        big = [n for n in names if pm.live(n).numel() > 1000]
        rs, ds, ninf, ok = [], [], [], 0
        for i in range(args.repairs):
            nm = big[(i * 7919) % len(big)]
            t = pm.live(nm)
            bit = 30 if t.dtype == torch.float32 else 14
            flip_(t, (i * 104729) % t.numel(), bit)
            n = 0
            while n <= len(pm._cs_slices):  # found within one checksum rotation
                st = pm.infer(x)
                n += 1
                if st.status.detections:
                    break
            ninf.append(n)
            rs.append(st.status.repair_s * 1e3)
            ds.append(st.status.detect_s * 1e3)
            ok += bool(st.status.detections and st.status.verified
                       and torch.equal(st.output, ref) and st.status.repaired == [nm])
            pm.recover()
        p["repair"] = {"median_ms": statistics.median(rs), "max_ms": max(rs),
                       "detect_median_ms": statistics.median(ds), "exact": ok,
                       "inferences_to_detect": {"median": statistics.median(ninf),
                                                "max": max(ninf)},
                       "n": args.repairs, "fault": "exponent MSB of one weight element"}
        p["checksum_every"] = every
        p["ratio_vs_graph_gpu_time"] = p["latency"]["gpu_ms"] / row["graph"]["gpu_ms"]
        p["tap_budget"] = budget
        row["protected"][variant] = p
        pm.close()
        del pm
        torch.cuda.empty_cache()
    row["fault_rate_per_inference"] = args.fault_rate
    return row


def breakdown(name: str, dtype: torch.dtype, args: argparse.Namespace) -> dict:
    """Where the protected per-request latency goes: GPU work, row copies, waits, CPU compare."""
    from save_ros.gpu.runtime import CudaProtectedModel, GpuProtectConfig

    torch.manual_seed(args.seed)
    model = _model(name).eval().cuda().to(dtype)
    gen = torch.Generator(device="cuda").manual_seed(args.seed)
    x = torch.randn((1, 3, 224, 224), generator=gen, device="cuda", dtype=dtype)
    calib = [torch.randn_like(x) for _ in range(8)]
    kv = dict(item.split("=") for item in args.variants.split(";")[0].split(","))
    cfg = GpuProtectConfig(checksum_every=int(kv.get("every", 1)),
                           tap_budget=float(kv.get("budget", 1.0)))
    pm = CudaProtectedModel(model, x, cfg, calibration=calib)
    it, wu = args.iters, args.warmup
    main = pm._main
    row: dict = {"model": name, "dtype": str(dtype).removeprefix("torch."),
                 "variant": args.variants.split(";")[0]}
    with torch.no_grad():
        g, _ = _capture(model, x)

    def plain():
        g.replay()
        torch.cuda.synchronize()

    def graph_on_main():  # the protected graph alone (taps + side-stream reductions), no copy
        main.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(main):
            pm._graph.replay()
        main.synchronize()

    def graph_copy_event():  # + the row copy to pinned memory and the event wait
        main.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(main):
            pm._graph.replay()
            pm._stats_host.copy_(pm._stats_dev, non_blocking=True)
            pm._done.record()
        pm._done.synchronize()

    slices = itertools.cycle(range(len(pm._cs_slices)))

    def submit_collect():  # + the CPU compare of the activation rows (no checksum)
        pm._submit(None)
        pm._collect(None)

    def submit_collect_cs():  # + the checksum slice on its own stream and its wait
        cs = next(slices)
        pm._submit(cs)
        pm._collect(cs)

    def immediate():  # publish at once: the output is ready, the verdict comes later
        r = pm.infer(x, wait=False)
        torch.cuda.current_stream().synchronize()
        return r

    for key, fn in (("unprotected_graph", plain), ("protected_graph_only", graph_on_main),
                    ("plus_row_copy_and_event", graph_copy_event),
                    ("plus_compare_no_checksum", submit_collect),
                    ("plus_checksum_slice", submit_collect_cs),
                    ("infer_wait", lambda: pm.infer(x)),
                    ("infer_immediate_output", immediate)):
        row[key] = _host_latency(fn, it, wu)
    pm._drain()
    stats, sums = pm._stats_host.numpy(), pm._cs_host.numpy()
    t0 = time.perf_counter()
    for _ in range(1000):
        pm.verifier.compare(stats, sums, pm._rows(0))
    row["cpu_compare_ms"] = (time.perf_counter() - t0) * 1e3 / 1000
    row["rows"] = {"activation": pm.act_plan.n_chunks, "weight": pm.weight_plan.n_chunks}
    pm.close()
    return row


def _print_row(r: dict) -> None:
    """One line per protected variant."""
    for k, p in r["protected"].items():
        print(f"{r['model']:>10} b{r['batch']} {r['dtype']:>8} eager {r['eager']['median_ms']:.3f}"
              f" graph {r['graph']['median_ms']:.3f} | {k}: prot {p['latency']['median_ms']:.3f}"
              f" AL {p.get('accurate_latency_ms', float('nan')):.3f}"
              f" ratio {p.get('ratio_vs_unprotected_best', float('nan')):.3f}"
              f" lat-ratio {p['latency']['median_ms'] / r['unprotected_best_ms']:.3f}"
              f" gpu-ratio {p['ratio_vs_graph_gpu_time']:.3f} repair {p['repair']['median_ms']:.2f}"
              f" fa {p['false_alarms']['count']}", flush=True)


def run(args: argparse.Namespace) -> int:
    """Benchmark every configuration, then the campaigns; print a table, write JSON."""
    if args.device != "cuda":
        print("save-ros bench-gpu measures the CUDA path; use `save-ros bench` for the CPU",
              file=sys.stderr)
        return 2
    if not cuda_available():
        err = CudaUnavailableError("no CUDA device: save-ros bench-gpu needs an NVIDIA GPU; "
                                   "the CPU path is measured by `save-ros bench`")
        print(f"save-ros bench-gpu: {err}", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    result = {
        "command": "save-ros bench-gpu " + " ".join(sys.argv[2:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "configs": [], "campaigns": [],
    }
    if args.breakdown:
        result["breakdown"] = []
        for name in args.model.split(","):
            for dt in args.dtype.split(","):
                b = breakdown(name, DTYPES[dt], args)
                result["breakdown"].append(b)
                print(json.dumps({k: (v["median_ms"] if isinstance(v, dict) and "median_ms" in v
                                      else v) for k, v in b.items()}), flush=True)
                _write(result, args.json)
        return 0
    for name in args.model.split(","):
        for dt in args.dtype.split(","):
            for b in [int(v) for v in args.batch.split(",")]:
                row = bench_config(name, b, DTYPES[dt], args)
                result["configs"].append(row)
                _print_row(row)
                _write(result, args.json)
    if args.trials > 0:
        for name in args.model.split(","):
            c = campaign(name, args)
            result["campaigns"].append(c)
            print(json.dumps(c), flush=True)
            _write(result, args.json)
    accurate_latency(result, args.fault_rate)
    _write(result, args.json)
    print("\nfinal (AccurateLatency ratio vs unprotected best, fault rate "
          f"{args.fault_rate}/inference):")
    for row in result["configs"]:
        _print_row(row)
    return 0


def _write(result: dict, path: str | None) -> None:
    """Write the JSON so far (a long run that is cut off still leaves its rows)."""
    if path:
        Path(path).write_text(json.dumps(result, indent=1))
