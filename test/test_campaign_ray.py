"""A campaign on a real Ray cluster of three node processes loses a worker node and carries on.

The cluster (test/raycluster.py) is a head without CPUs and two worker nodes of one CPU each,
all `ray start` processes of this machine; the campaign is `save-ros robustness campaign --ray
ADDRESS` in a process of its own. As soon as a worker node has delivered trials, it is SIGKILLed
with all its processes; Ray retries its chunks on the other node. The store must then hold every
trial once, each equal to the one-process run.
"""

import json
import subprocess
import sys
import time

import pytest

from save_ros.eval.campaign import CampaignConfig
from save_ros.eval.shard import ModelSource, campaign_spec, in_process, run_sharded
from save_ros.eval.store import TrialStore
from save_ros.eval.trial import reproducible, trial_keys

pytest.importorskip("ray", reason="Ray is an optional extra: pip install .[cluster]")
from raycluster import LocalRayCluster  # noqa: E402  (after the skip: it needs the ray CLI)

CFG = CampaignConfig(model="digits_cnn", target="both", flips=(1, 16), trials=200, batch=96,
                     methods=("unprotected",))
SOURCE = ModelSource("digits_cnn")


def reference() -> list[dict]:
    store = TrialStore(":memory:", campaign_spec(CFG, SOURCE, "cpu"))
    run_sharded(CFG, SOURCE, in_process(), store, progress=False, command=[])
    return [reproducible(r) for r in store.records()]


def stored_workers(path) -> dict[str, int]:
    import sqlite3
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return dict(db.execute("SELECT worker, COUNT(*) FROM trials GROUP BY worker"))
    except sqlite3.OperationalError:
        return {}


@pytest.fixture
def cluster():
    c = LocalRayCluster(workers=2).start()
    try:
        yield c
    finally:
        c.stop()


def test_campaign_survives_a_killed_worker_node(cluster, tmp_path):
    store, out = tmp_path / "c.sqlite", tmp_path / "c.json"
    cmd = [sys.executable, "-m", "save_ros.cli", "robustness", "campaign", "--model", "digits_cnn",
           "--target", "both", "--flips", "1,16", "--trials", str(CFG.trials), "--batch",
           str(CFG.batch), "--device", "cpu", "--ray", cluster.address, "--store", str(store),
           "--json", str(out), "--quiet"]
    total = len(trial_keys(CFG))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim, at_kill = None, {}
    try:
        end = time.monotonic() + 180
        while time.monotonic() < end and proc.poll() is None and victim is None:
            at_kill = stored_workers(store)
            nodes = {cluster.node_of(int(w.rsplit(":", 1)[1])) for w in at_kill} - {None}
            if nodes:  # a worker node is delivering trials: kill it, processes and all
                victim = min(nodes)
                cluster.kill_node(victim)
            time.sleep(0.02)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert victim in (1, 2), f"no worker node delivered trials: {stderr[-2000:]}"
    assert proc.returncode == 0, stderr[-3000:]
    assert sum(at_kill.values()) < total, "the node must die mid-campaign"
    with TrialStore(store, campaign_spec(CFG, SOURCE, "cpu"), resume=True) as s:
        got = s.records()
        per_worker = s.workers()
    assert len(got) == total == sum(per_worker.values())  # 0 lost, 0 stored twice
    assert [reproducible(r) for r in got] == reference()  # each as in one process
    ex = json.loads(out.read_text())["execution"]
    assert ex["executor"] == "ray" and ex["conflicts"] == 0 and ex["trials_run"] == total
    # trials ran on both nodes; the survivor finished the killed node's share
    assert len(per_worker) >= 2


@pytest.mark.slow
def test_a_killed_ray_campaign_resumes_on_the_cluster(cluster, tmp_path):
    """The driver dies (SIGKILL) mid-campaign; --resume on the same cluster finishes it."""
    store = tmp_path / "c.sqlite"
    cmd = [sys.executable, "-m", "save_ros.cli", "robustness", "campaign", "--model", "digits_cnn",
           "--target", "both", "--flips", "1,16", "--trials", str(CFG.trials), "--batch",
           str(CFG.batch), "--device", "cpu", "--ray", cluster.address, "--store", str(store),
           "--quiet"]
    total = len(trial_keys(CFG))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 180
        while time.monotonic() < end and proc.poll() is None and not stored_workers(store):
            time.sleep(0.02)
        proc.kill()
    finally:
        proc.wait(60)
    at_kill = sum(stored_workers(store).values())
    assert 0 < at_kill < total, f"the kill must land mid-campaign ({at_kill}/{total})"
    again = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    with TrialStore(store, campaign_spec(CFG, SOURCE, "cpu"), resume=True) as s:
        got = s.records()
    assert len(got) == total and [reproducible(r) for r in got] == reference()


@pytest.mark.slow
def test_train_campaign_on_ray_equals_one_process(cluster, tmp_path):
    """`robustness training --ray`: the same rows (crashed fine-tunes too) as in one process."""
    base = [sys.executable, "-m", "save_ros.cli", "robustness", "training", "--targets", "weights",
            "--flips", "4096", "--stuck-bit", "-1", "--trials", "3", "--epochs", "1",
            "--rollback", "--quiet"]
    out = {}
    for name, extra in (("ray", ["--ray", cluster.address]), ("one", [])):
        path = tmp_path / f"{name}.json"
        run = subprocess.run(base + extra + ["--json", str(path)], capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        out[name] = json.loads(path.read_text())
    assert out["ray"]["execution"]["executor"] == "ray"
    # NaN accuracies of crashed runs compare equal as JSON text
    assert json.dumps(out["ray"]["rows"], sort_keys=True) == json.dumps(out["one"]["rows"],
                                                                        sort_keys=True)
    assert out["ray"]["rows"][0]["shares"]["crash"] > 0  # 4096 flips: fine-tunes do crash


def test_coverage_bench_on_ray_equals_one_process(cluster, tmp_path):
    """`bench scale --what coverage --ray`: chunk by chunk the records of one process."""
    from test_scale_shard import MODEL, OPTS, bench, chunk_records, counts

    one = bench(tmp_path, "one", "--seconds", "100000", "--store", str(tmp_path / "one.sqlite"))
    out, store = tmp_path / "ray.json", tmp_path / "ray.sqlite"
    run = subprocess.run([sys.executable, "-m", "save_ros.cli", "bench", "scale", *OPTS,
                          "--ray", cluster.address, "--store", str(store), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    row = json.loads(out.read_text())["models"][MODEL]["coverage"]["full"]
    assert counts(row) == counts(one)
    assert chunk_records(store) == chunk_records(tmp_path / "one.sqlite")
    ex = row["execution"]
    assert ex["executor"] == "ray" and ex["conflicts"] == 0 and ex["chunks_resumed"] == 0
    assert len(ex["store_chunks_per_worker"]) >= 2  # both worker nodes ran chunks
