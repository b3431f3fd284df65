"""A camera stream through save_node: bare vs protected, latency, freshness, faults. Over DDS.

For each model (a zoo name such as `resnet50`, or `package.module:factory`), two node processes
run at once on the same device (`protect:=false` and the SAVE node) with the node's defaults
(newest input first, queue 1, input QoS depth 1, `publish_policy: verified`), except a reliable
input QoS: a 150 KB frame over best-effort DDS was lost more often than not on the GPU host.
A client publishes a seeded stream of rgb8 images (`--size` x `--size`) at `--rate` Hz; passes
alternate between the two nodes so both see the same machine. Reported per node: publish ->
`~/output` latency p50 / p99 (end to end, over DDS), frames answered, frames dropped as
superseded (the newest-first queue serving the freshest frame), and stale frames served: an
output for a frame older than one whose output was already published (must be 0). Then the SAVE
node replays the stream once clean and once with `~/inject_faults` (weight bit flips) every
`--inject-every` frames; every output of the faulty pass must equal the clean pass's output for
the same frame.

`python -m save_ros.tools.bench_stream --models resnet50 --device cuda --out stream.json`
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from save_ros.argtypes import nonnegative_int, positive_float, positive_int, standalone
from save_ros.eval.record import run_record, write_json
from save_ros.eval.timing import summary
from save_ros.tools.client import ReplayClient, stamp_key
from save_ros.tools.process import NodeProcess


def frames(n: int, size: int, seed: int) -> list[Image]:
    """n rgb8 Image messages of seeded zoo images, stamped 1 s + i ms apart (distinct)."""
    from save_ros.models import zoo

    imgs = (zoo.images(min(n, 64), size, seed=seed) * 255).round().to(torch.uint8)
    out = []
    for i in range(n):
        px = imgs[i % len(imgs)].permute(1, 2, 0).contiguous().numpy()
        if i >= len(imgs):  # distinct content for every frame: shift by the frame index
            px = np.roll(px, i, axis=1)
        msg = Image(header=Header(stamp=Time(sec=1 + i // 1000, nanosec=(i % 1000) * 1_000_000),
                                  frame_id="camera"),
                    height=size, width=size, encoding="rgb8", is_bigendian=0, step=size * 3,
                    data=px.tobytes())
        out.append(msg)
    return out


def _overrides(model: str, device: str, size: int, protect: bool, calib: Path,
               cache: Path) -> dict[str, object]:
    return {"model": model, "device": device, "input_type": "image",
            "input_shape": [3, size, size], "input_low": [0.0], "input_high": [1.0],
            "protect": protect, "calibration.file": str(calib), "analysis_cache": str(cache),
            "fault_injection.enabled": protect, "fault_injection.count": 64,
            "diagnostics_period": 0.5, "qos.reliability": "reliable"}


def _pass(client: ReplayClient, msgs: list[Image], rate: float, inject_every: int = 0) -> dict:
    """Publish the stream at `rate` Hz; the per-frame outputs and latencies."""
    t0 = time.monotonic()
    sent: dict[int, float] = {}
    with client._cond:
        client.result.outputs.clear()
        client.result.statuses.clear()
    before = client.latest_diagnostics()
    injections = []
    for i, m in enumerate(msgs):
        if inject_every and i and i % inject_every == 0:
            injections.append(client.call("inject_faults").message)
        due = t0 + i / rate
        time.sleep(max(0.0, due - time.monotonic()))
        sent[stamp_key(m.header)] = time.monotonic()
        client.pub.publish(m)
    time.sleep(2.0)
    after = client.latest_diagnostics()
    with client._cond:
        outs = {k: list(v) for k, v in client.result.outputs.items()}
    lat, order, stale = [], [], 0
    newest = -1
    for k, got in sorted(outs.items(), key=lambda kv: kv[1][0][0]):
        if k in sent:
            lat.append((got[0][0] - sent[k]) * 1e3)
        stale += k < newest  # an older frame's output after a newer one's
        newest = max(newest, k)
        order.append(k)

    def delta(key: str) -> int:
        return int(after.get(key, 0)) - int(before.get(key, 0))

    return {"sent": len(msgs), "answered": len(outs), "latencies_ms": lat,
            "superseded": delta("dropped"), "stale_served": stale,
            "outputs": {k: v[-1][1] for k, v in outs.items()}, "injections": injections}


def _stats(values: list[float]) -> dict[str, float]:
    s = summary(values, (50, 99))
    return {k: s[k] for k in ("p50", "p99", "mean", "n")} if s else {}


def measure(model: str, device: str, size: int, n: int, rate: float, passes: int,
            inject_every: int, seed: int) -> dict:
    """Both nodes, alternating passes; then clean vs faulty on the SAVE node."""
    from save_ros.models import zoo

    msgs = frames(n, size, seed)
    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "calib.pt"
        torch.save(zoo.images(64, size, seed=seed + 1), calib)
        nodes = {p: NodeProcess(None, namespace=f"stream_{'save' if p else 'bare'}_{os.getpid()}",
                                overrides=_overrides(model, device, size, p, calib,
                                                     Path(tmp) / "analysis.json")).start()
                 for p in (False, True)}
        clients = {p: ReplayClient(node_fqn=nodes[p].fqn) for p in nodes}
        try:
            for p in (False, True):
                clients[p].wait_for_node(nodes[p], timeout=600.0)
            for p in (False, True):  # warm-up: cuDNN autotuning, CUDA graphs, DDS matching
                _pass(clients[p], msgs[:30], rate)
            runs: dict[bool, list] = {False: [], True: []}
            for _ in range(passes):
                for p in (False, True):
                    runs[p].append(_pass(clients[p], msgs, rate))
            clean = runs[True][-1]
            faulty = _pass(clients[True], msgs, rate, inject_every)
        finally:
            for c in clients.values():
                c.close()
            codes = {p: nodes[p].stop() for p in nodes}
    both = [k for k in faulty["outputs"] if k in clean["outputs"]]
    differ = [k for k in both if faulty["outputs"][k] != clean["outputs"][k]]
    row: dict = {"model": model, "device": device, "size": size, "rate_hz": rate,
                 "frames": n, "passes": passes, "exit_codes": {str(k): v for k, v in
                                                              codes.items()}}
    for p, name in ((False, "bare"), (True, "save")):
        lat = [v for r in runs[p] for v in r["latencies_ms"]]
        row[name] = {"e2e_ms": _stats(lat), "answered": sum(r["answered"] for r in runs[p]),
                     "sent": sum(r["sent"] for r in runs[p]),
                     "superseded": sum(r["superseded"] for r in runs[p]),
                     "stale_served": sum(r["stale_served"] for r in runs[p])}
    row["p50_ratio"] = row["save"]["e2e_ms"]["p50"] / row["bare"]["e2e_ms"]["p50"]
    row["faults"] = {"inject_every": inject_every, "injections": len(faulty["injections"]),
                     "compared_frames": len(both), "outputs_differing": len(differ),
                     "faulty_e2e_ms": _stats(faulty["latencies_ms"]),
                     "injection_replies": faulty["injections"][:3]}
    return row


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `save-ros bench ros-stream`."""
    parser.add_argument("--models", default="resnet50")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=positive_int, default=224)
    parser.add_argument("--frames", type=positive_int, default=300)
    parser.add_argument("--rate", type=positive_float, default=30.0)
    parser.add_argument("--passes", type=positive_int, default=2)
    parser.add_argument("--inject-every", type=nonnegative_int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)


def run(args: argparse.Namespace) -> int:
    """Measure every model; print one line each; write JSON."""
    result: dict = run_record("save_ros.bench_ros_stream", device=args.device) | {"models": []}
    for model in args.models.split(","):
        row = measure(model, args.device, args.size, args.frames, args.rate, args.passes,
                      args.inject_every, args.seed)
        result["models"].append(row)
        b, s = row["bare"], row["save"]
        print(f"{model} on {args.device}: e2e p50 bare {b['e2e_ms']['p50']:.1f} ms vs SAVE "
              f"{s['e2e_ms']['p50']:.1f} ms ({row['p50_ratio']:.2f}x), p99 "
              f"{b['e2e_ms']['p99']:.1f} vs {s['e2e_ms']['p99']:.1f} ms; answered "
              f"{b['answered']}/{b['sent']} vs {s['answered']}/{s['sent']}; stale served "
              f"{b['stale_served']} / {s['stale_served']}; faults: "
              f"{row['faults']['injections']} injections, {row['faults']['outputs_differing']}"
              f" of {row['faults']['compared_frames']} outputs differ from the clean pass",
              flush=True)
        if args.out:
            write_json(args.out, result)
    return 0


main = standalone(add_arguments, run, __doc__, prog="python -m save_ros.tools.bench_stream")


if __name__ == "__main__":
    sys.exit(main())
