"""ROS latency and throughput of save_node, next to the bare model call, per model.

For each model, measured in one run: the bare model call in-process (the floor); end-to-end
latency through a bare node (`protect:=false`) and a SAVE node (input published -> output
received, lockstep, over DDS on this host); the capacity (inputs answered per second while a
flood keeps the node saturated); and the highest input rate, on a ladder of rates, up to which
each node answered every input with none dropped (with the config's queue_size, so scheduling
stalls of the host count as drops). Both nodes run at once and the
measurements alternate between them, so the two see the same machine load.

`python -m save_ros.tools.bench_node --out docs/results/ros_bench.json`
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from save_ros.argtypes import positive_int, standalone
from save_ros.eval.record import run_record, write_json
from save_ros.eval.timing import summary
from save_ros.ros.bags import read_messages
from save_ros.tools.bundled import (
    BAGS_DIR,
    CARTPOLE_BAG,
    CARTPOLE_TOPIC,
    CONFIG_DIR,
    DIGITS_BAG,
    DIGITS_TOPIC,
)
from save_ros.tools.client import ReplayClient
from save_ros.tools.process import NodeProcess, config_parameters

MODELS = ("digits_cnn", "digits_resnet", "digits_vit", "cartpole_policy")
RATES_HZ = (50, 100, 200, 400, 800)


def _inputs(model: str) -> list:
    """The bundled bag's messages for this model's input type."""
    if model == "cartpole_policy":
        return [m.msg for m in read_messages(BAGS_DIR / CARTPOLE_BAG, (CARTPOLE_TOPIC,))]
    return [m.msg for m in read_messages(BAGS_DIR / DIGITS_BAG, (DIGITS_TOPIC,))]


def _restamped(msgs: list, count: int, hz: float, base_sec: int) -> list:
    """`count` copies of the inputs, cycled, stamped 1/hz apart (replay paces by stamp)."""
    out = []
    for i in range(count):
        src = msgs[i % len(msgs)]
        msg = type(src)()
        for slot in src.get_fields_and_field_types():
            setattr(msg, slot, getattr(src, slot))
        t = base_sec * 10**9 + int(i * 1e9 / hz)
        msg.header = type(src.header)(frame_id=src.header.frame_id)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(t, 10**9)
        out.append(msg)
    return out


def bare_call_ms(model: str, repeats: int = 300) -> dict[str, float]:
    """The model called in-process on one input (1 thread): median and p90 in ms."""
    from save_ros import models

    torch.set_num_threads(1)
    module = models.load(model)
    x = models.dataset(model, "test")[0][:1]
    times = []
    with torch.no_grad():
        for _ in range(20):
            module(x)
        for _ in range(repeats):
            t = time.perf_counter()
            module(x)
            times.append((time.perf_counter() - t) * 1e3)
    s = summary(times, (50, 90))
    return {"p50": s["p50"], "p90": s["p90"]}


def _start(model: str, protect: bool, tmp: Path, queue_size: int | None) -> NodeProcess:
    """A bare or SAVE node for `model`, in a namespace of its own."""
    config = CONFIG_DIR / f"{model}.yaml"
    params = config_parameters(config)
    overrides: dict[str, object] = {
        "protect": protect, "analysis_cache": str(tmp / f"{model}.analysis.json"),
        "publish_policy": params["publish_policy"] if protect else "immediate",
        "qos.depth": 1000, "diagnostics_period": 0.5}
    if queue_size is not None:
        overrides["queue_size"] = queue_size
    kind = "save" if protect else "bare"
    return NodeProcess(config, namespace=f"bench_{kind}_{os.getpid()}",
                       overrides=overrides).start()


def _capacity(res) -> dict[str, float]:
    """Answered inputs per second while flooded (publisher rate: the bound it can show)."""
    sent = sorted(r.sent_at for r in res.records)
    firsts = sorted(r.outputs[0][0] for r in res.records if r.outputs)
    span = (firsts[-1] - sent[0]) if firsts else float("nan")
    return {"answered": len(firsts), "published": len(sent),
            "answered_per_s": len(firsts) / span if firsts else 0.0,
            "publish_rate_hz": len(sent) / max(sent[-1] - sent[0], 1e-9),
            "dropped": res.summary()["dropped"]}


def node_figures(model: str, lockstep_n: int, ladder_n: int, tmp: Path,
                 queue_size: int | None = None, capacity_n: int = 500
                 ) -> dict[str, dict[str, object]]:
    """Bare and SAVE node side by side: lockstep latency and the rate ladder, interleaved.

    Both nodes run at once and every measurement alternates between them, so a change in the
    machine's load during the run affects both alike.
    """
    params = config_parameters(CONFIG_DIR / f"{model}.yaml")
    msgs = _inputs(model)
    procs = {"bare_node": _start(model, False, tmp, queue_size)}
    procs["save_node"] = _start(model, True, tmp, queue_size)
    out: dict[str, dict[str, object]] = {k: {"ladder": []} for k in procs}
    clients: dict[str, ReplayClient] = {}
    try:
        for key, proc in procs.items():
            clients[key] = ReplayClient(node_fqn=proc.fqn,
                                        input_type=str(params["input_type"]),
                                        reliability=str(params["qos.reliability"]))
            clients[key].wait_for_node(proc, timeout=180.0)
        for client in clients.values():
            client.replay(_restamped(msgs, 20, 100, 1), pace="lockstep")  # warm-up
        rounds = 4
        lat = {k: [] for k in clients}
        verdict = {k: [] for k in clients}
        for r in range(rounds):
            for key, client in clients.items():
                res = client.replay(_restamped(msgs, lockstep_n // rounds, 100, 2 + r),
                                    pace="lockstep")
                lat[key].extend(res.latencies_ms().tolist())
                verdict[key].extend(res.verdict_latencies_ms().tolist())
        for key in clients:
            for name, values in (("lockstep_latency_ms", lat[key]),
                                 ("verdict_latency_ms", verdict[key])):
                s = summary(values)
                out[key][name] = {k: s[k] for k in ("p50", "p90", "p99", "mean", "n")}
        for _ in range(2):  # capacity: a flood keeps each node saturated; alternate twice
            for key, client in clients.items():
                res = client.replay(_restamped(msgs, capacity_n, 1000, 9), pace="afap",
                                    settle=1.0)
                out[key].setdefault("capacity", []).append(_capacity(res))
        for k, hz in enumerate(RATES_HZ):
            for key, client in clients.items():
                res = client.replay(_restamped(msgs, ladder_n, hz, 10 + k), pace="rate",
                                    settle=1.0)
                s = res.summary()
                ok = s["dropped"] == 0 and s["outputs"] == s["inputs"]
                out[key]["ladder"].append({"hz": hz, "inputs": s["inputs"],
                                           "outputs": s["outputs"], "dropped": s["dropped"],
                                           "ok": ok, "latency_ms": s["latency_ms"]})
                print(f"  {model} {key} {hz} Hz: {s['outputs']}/{s['inputs']} answered, "
                      f"{s['dropped']} dropped", flush=True)
        for key in clients:
            best = 0
            for step in out[key]["ladder"]:  # every rate up to it answered in full
                if not step["ok"]:
                    break
                best = step["hz"]
            out[key]["max_rate_without_drops_hz"] = best
    finally:
        for client in clients.values():
            client.close()
        for key, proc in procs.items():
            out[key]["node_exit_code"] = proc.stop()
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `save-ros bench ros`."""
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--lockstep", type=positive_int, default=200, help="inputs for latency")
    parser.add_argument("--ladder", type=positive_int, default=300, help="inputs per rate step")
    parser.add_argument("--queue-size", type=positive_int,
                        help="node queue_size (default: config's)")
    parser.add_argument("--out", type=Path, help="JSON results")


def run(args: argparse.Namespace) -> int:
    """Measure every model; print a table; write JSON."""
    import tempfile

    results: dict[str, object] = run_record("save_ros.bench_ros") | {
        "rates_hz": RATES_HZ, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            entry: dict[str, object] = {"bare_call_ms": bare_call_ms(model)}
            entry.update(node_figures(model, args.lockstep, args.ladder, Path(tmp),
                                      args.queue_size))
            results["models"][model] = entry
            b, n, s = (entry["bare_call_ms"]["p50"],
                       entry["bare_node"]["lockstep_latency_ms"]["p50"],
                       entry["save_node"]["lockstep_latency_ms"]["p50"])
            cap = {k: max(c["answered_per_s"] for c in entry[k]["capacity"])
                   for k in ("bare_node", "save_node")}
            print(f"{model}: bare call {b:.3f} ms | bare node e2e {n:.2f} ms | SAVE node e2e "
                  f"{s:.2f} ms | flooded: bare {cap['bare_node']:.0f}/s, SAVE "
                  f"{cap['save_node']:.0f}/s | max rate without drops: bare "
                  f"{entry['bare_node']['max_rate_without_drops_hz']} Hz, SAVE "
                  f"{entry['save_node']['max_rate_without_drops_hz']} Hz", flush=True)
    results["loadavg_end"] = os.getloadavg()
    if args.out:
        write_json(args.out, results)
    return 0


main = standalone(add_arguments, run, __doc__, prog="python -m save_ros.tools.bench_node")


if __name__ == "__main__":
    sys.exit(main())
