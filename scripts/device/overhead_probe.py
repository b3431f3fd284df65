"""Where the CUDA backend's overhead goes, and what the unprotected baselines really are.

One device call (writes JSON to argv[1]): for each model / dtype at batch 1:
- the unprotected model: eager, CUDA graph, torch.compile (default) and torch.compile
  mode="reduce-overhead" (CUDA graphs), each median ms of interleaved blocks;
- `protect()` with every vulnerable bit covered by memory checksums (default), by DMR / ABFT
  (`memory_checksums=False`), and range checks only: the verified `infer()` latency, the replay of
  the forward+checks graph alone, the weight-checksum graph alone, and the host remainder;
- the kernel count of one protected replay against the plain graph (torch.profiler);
- the cost of memory checksums done as one torch reduction per activation, written and read,
  captured in a CUDA graph (the launch cost a per-tensor design would pay).
Usage: python3 scripts/device/overhead_probe.py OUT.json [models] [dtypes]
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import time
import traceback

import torch

import save_ros
from save_ros.models import zoo

COMPILE = set(os.environ.get("COMPILE_MODELS", "resnet50").split(","))  # compiles are slow


def med_ms(fn, n=30, blocks=5):
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(blocks):
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t)
        out.append(statistics.median(ts) * 1e3)
    return statistics.median(out)


def graph_of(fn, x):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.inference_mode():
        for _ in range(3):
            fn(x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(g):
        fn(x)
    return g


def kernels(fn):
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        fn()
        torch.cuda.synchronize()
    evs = [e for e in p.events() if e.device_type.name == "CUDA"]
    return len(evs)


def main():
    path = sys.argv[1]
    models = (sys.argv[2] if len(sys.argv) > 2 else "resnet50,mobilenet_v2").split(",")
    dtypes = (sys.argv[3] if len(sys.argv) > 3 else "fp32,fp16").split(",")
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}

    def save():
        with open(path, "w") as f:
            json.dump(res, f, indent=1)

    for name in models:
        base = zoo.build(name).cuda()
        calib = zoo.images(64, 224, seed=1).cuda()
        t = time.perf_counter()
        pm0 = save_ros.protect(copy.deepcopy(base), calib[:1], (0.0, 1.0),
                               save_ros.ProtectConfig(calibration=calib))
        analysis = pm0.analysis
        pm0.close()
        print(name, "analysis", round(time.perf_counter() - t, 1), "s", flush=True)
        for dt in dtypes:
            dtype = {"fp32": torch.float32, "fp16": torch.float16}[dt]
            x = calib[:1].to(dtype)
            row = {"model": name, "dtype": dt}
            res["rows"].append(row)
            try:
                plain = copy.deepcopy(base).to(dtype)
                with torch.inference_mode():
                    row["eager_ms"] = med_ms(lambda p=plain, x=x: p(x))
                g = graph_of(plain, x)
                row["graph_ms"] = med_ms(g.replay)
                row["graph_kernels"] = kernels(g.replay)
                modes = ("default", "reduce-overhead") if name in COMPILE else ()
                for mode in modes:
                    try:
                        t = time.perf_counter()
                        c = torch.compile(copy.deepcopy(base).to(dtype), mode=mode)
                        with torch.inference_mode():
                            for _ in range(3):
                                c(x)
                            row[f"compile_{mode}_ms"] = med_ms(lambda c=c, x=x: c(x))
                        row[f"compile_{mode}_build_s"] = time.perf_counter() - t
                    except Exception as exc:  # report, go on
                        row[f"compile_{mode}_error"] = repr(exc)[:300]
                    torch._dynamo.reset()
                save()
                variants = {"checksums": {}, "dmr_abft": {"memory_checksums": False},
                            "range_only": {"redundancy_budget": 0.0,
                                           "memory_checksums": False}}
                for vname, kw in variants.items():
                    pm = save_ros.protect(copy.deepcopy(base).to(dtype), x, (0.0, 1.0),
                                          save_ros.ProtectConfig(calibration=calib.to(dtype),
                                                                 analysis=analysis, **kw))
                    prog = pm._program(x)
                    v = {"checks": pm._plan.by_kind()}
                    v["infer_ms"] = med_ms(lambda pm=pm, x=x: pm.infer(x))
                    v["replay_ms"] = med_ms(prog.graph.replay)
                    v["weights_ms"] = med_ms(prog.graph_cs.replay)
                    v["both_replays_ms"] = med_ms(lambda p=prog: (p.graph.replay(),
                                                                  p.graph_cs.replay()))
                    v["kernels"] = kernels(prog.graph.replay)
                    v["weight_kernels"] = kernels(prog.graph_cs.replay)
                    v["ratio_vs_graph"] = v["infer_ms"] / row["graph_ms"]
                    row[vname] = v
                    print(name, dt, vname, {k: (round(val, 3) if isinstance(val, float) else val)
                                            for k, val in v.items()}, flush=True)
                    pm.close()
                    save()
                # memory checksums as one torch reduction per activation (write and read)
                from save_ros.core.verify.memsum import bitsum
                with torch.inference_mode():
                    acts = []
                    hooks = [m.register_forward_hook(lambda m, i, o, acts=acts: acts.append(o))
                             for m in plain.modules() if not list(m.children())]
                    plain(x)
                    for h in hooks:
                        h.remove()
                acts = [a for a in acts if isinstance(a, torch.Tensor)]

                def sums(_x, acts=acts):
                    return [bitsum(a) for a in acts for _ in range(2)]
                gs = graph_of(sums, x)
                row["memsum_tensors"] = len(acts)
                row["memsum_2x_ms"] = med_ms(gs.replay)
                row["memsum_kernels"] = kernels(gs.replay)
                print(name, dt, {k: v for k, v in row.items() if not isinstance(v, dict)},
                      flush=True)
            except Exception:
                row["error"] = traceback.format_exc()[-2000:]
                print(row["error"], flush=True)
            save()
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
