"""Sharded campaigns: trials as pure functions of their key, the store, resume after a kill."""

import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from save_ros.eval.campaign import CampaignConfig
from save_ros.eval.shard import Meter, ModelSource, campaign_spec, in_process, run_sharded
from save_ros.eval.store import StoreError, TrialStore
from save_ros.eval.trial import CampaignContext, TrialKey, reproducible, trial_keys

CFG = CampaignConfig(model="digits_cnn", target="both", flips=(1, 16), trials=5, batch=32,
                     methods=("unprotected", "ecc_oracle"))
SOURCE = ModelSource("digits_cnn")


def reference(cfg: CampaignConfig = CFG) -> list[dict]:
    """The trial records of a one-process run, in key order, without timings."""
    store = TrialStore(":memory:", campaign_spec(cfg, SOURCE, "cpu"))
    run_sharded(cfg, SOURCE, in_process(), store, progress=False, command=[])
    return [reproducible(r) for r in store.records()]


def fresh_context_per_chunk_backwards(job, parts):
    """An executor whose every chunk runs on a freshly built model, last chunk first."""
    from save_ros.eval import shard

    for part in reversed(parts):
        shard._CONTEXTS.clear()
        yield shard.run_chunk(job, part)
    shard._CONTEXTS.clear()


fresh_context_per_chunk_backwards.workers = 3


def test_a_trial_is_a_function_of_its_key_wherever_and_whenever_it_runs():
    ref = reference()
    assert len(ref) == 2 * 2 * 5 and len({r["seed"] for r in ref}) == 2 * 5  # methods share seeds
    store = TrialStore(":memory:", campaign_spec(CFG, SOURCE, "cpu"))
    res = run_sharded(CFG, SOURCE, fresh_context_per_chunk_backwards, store, progress=False,
                      command=[])
    assert [reproducible(r) for r in store.records()] == ref
    assert res["execution"]["trials_run"] == 20 and res["execution"]["duplicates_ignored"] == 0
    unprot = res["points"][0]
    assert unprot["trials"] == 5 and unprot["seeds"] == [r["seed"] for r in ref[10:15]]
    # the ECC oracle exposes nothing: no flips drawn, nothing changed
    assert all(r["flips"] == 0 and r["changed"] == 0 for r in ref[:10])
    assert sum(r["changed"] for r in ref[10:]) > 0


def test_store_keeps_each_trial_once_and_refuses_another_campaign(tmp_path):
    path = tmp_path / "c.sqlite"
    spec = campaign_spec(CFG, SOURCE, "cpu")
    rec = {"method": "unprotected", "point": 0, "trial": 3, "seed": 7, "flips": 1,
           "accuracy": 0.5, "samples": 2, "changed": 1, "sdc": 1, "detected": 0,
           "nonfinite": 0, "latency_s": 0.1}
    store = TrialStore(path, spec)
    assert store.add([rec], "h:1") == 1
    assert store.add([rec | {"latency_s": 0.2}], "h:2") == 0  # a retried chunk: same trial
    assert (store.duplicates, store.conflicts) == (1, 0)
    assert store.add([rec | {"sdc": 0}]) == 0 and store.conflicts == 1  # not reproducible!
    assert store.done() == {TrialKey("unprotected", 0, 3)} and store.workers() == {"h:1": 1}
    store.close()
    with pytest.raises(StoreError, match="--resume"):
        TrialStore(path, spec)
    other = campaign_spec(CampaignConfig(model="digits_cnn", trials=6), SOURCE, "cpu")
    with pytest.raises(StoreError, match="another campaign.*config.trials"):
        TrialStore(path, other, resume=True)
    with pytest.raises(StoreError, match="does not exist"):
        TrialStore(tmp_path / "none.sqlite", spec, resume=True)
    (tmp_path / "text.sqlite").write_text("not a database " * 100)
    with pytest.raises(StoreError, match="cannot use it as a campaign store"):
        TrialStore(tmp_path / "text.sqlite", spec, resume=True)
    again = TrialStore(path, spec, resume=True)
    assert len(again.records()) == 1
    assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_meter_shows_rate_and_eta(capsys):
    m = Meter(10, 4, stream=sys.stderr, every=0.0)
    m.t0 -= 2.0  # two seconds ago
    m.update(2)
    err = capsys.readouterr().err
    assert "campaign: 6/10 trials" in err and "trials/s" in err and "ETA 00:00:0" in err


def _rows(path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet (read-only: never create it here)
        return 0


def campaign_cmd(store, *extra: str) -> list[str]:
    return [sys.executable, "-m", "save_ros.cli", "robustness", "campaign", "--model", "digits_cnn",
            "--target", "both", "--flips", "1,16", "--trials", str(LONG.trials), "--batch", "32",
            "--method", "unprotected,ecc_oracle", "--device", "cpu", "--store", str(store),
            "--quiet", *extra]


LONG = CampaignConfig(model="digits_cnn", target="both", flips=(1, 16), trials=150, batch=32,
                      methods=("unprotected", "ecc_oracle"))


def wait_rows(path, proc, least: int, timeout: float = 120.0) -> int:
    """Wait until the store holds >= least trials (or the process ended); the count."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        n = _rows(path)
        if n >= least:
            return n
        time.sleep(0.01)
    return _rows(path)


def test_a_killed_campaign_resumes_without_losing_or_repeating_a_trial(tmp_path):
    store = tmp_path / "c.sqlite"
    total = len(trial_keys(LONG))
    proc = subprocess.Popen(campaign_cmd(store), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        at_kill = wait_rows(store, proc, 1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert 0 < at_kill < total, f"the kill must land mid-campaign ({at_kill}/{total} stored)"
    again = subprocess.run(campaign_cmd(store, "--resume", "--json", str(tmp_path / "r.json")),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    ex = res["execution"]
    assert ex["trials_resumed"] >= at_kill and ex["trials_resumed"] + ex["trials_run"] == total
    with TrialStore(store, campaign_spec(LONG, SOURCE, "cpu"), resume=True) as s:
        got = [reproducible(r) for r in s.records()]
    assert got == reference(LONG)  # none lost, none twice, each the same as in one process
    assert [p["trials"] for p in res["points"]] == [150] * 4


def test_resume_refuses_other_options(tmp_path):
    store = tmp_path / "c.sqlite"
    store_obj = TrialStore(store, campaign_spec(LONG, SOURCE, "cpu"))
    store_obj.close()
    cmd = campaign_cmd(store, "--resume")
    cmd[cmd.index("--trials") + 1] = "7"
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "another campaign" in out.stderr and "trials" in out.stderr


def test_context_is_prepared_once_and_runs_any_key():
    from save_ros.eval.campaign import activation_naming
    from save_ros.eval.methods import get_method

    setup = SOURCE.setup(CFG.batch, CFG.episodes)
    naming = activation_naming(CFG, setup, [get_method(m) for m in CFG.methods])
    ctx = CampaignContext(CFG, setup, naming)
    key = TrialKey("unprotected", 1, 4)
    a, b = ctx.run(key), ctx.run(key)
    assert reproducible(a) == reproducible(b) and a["flips"] == 16
    assert ctx.meta()["methods"]["unprotected"]["activation_naming"] == "fx"


def test_ray_is_imported_only_by_the_module_that_runs_on_ray():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "save_ros"
    importers = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "ray" or n.startswith("ray.") for n in names):
                importers.add(path.relative_to(root).as_posix())
    assert importers == {"eval/shard_ray.py"}


def test_ray_missing_is_a_clear_error():
    code = ("import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
            "from save_ros.cli import main\n"
            "sys.exit(main(['robustness', 'campaign', '--trials', '1', '--flips', '1',"
            " '--ray', 'auto']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stderr
    assert "--ray needs Ray: pip install" in out.stderr and "Traceback" not in out.stderr


def test_bad_worker_options_are_clear_errors(tmp_path):
    base = [sys.executable, "-m", "save_ros.cli", "robustness", "campaign", "--trials", "1",
            "--flips", "1"]
    import torch

    cases = [(["--resume"], "--resume needs --store"),
             (["--workers", "-1"], "--workers must be >= 0")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "CUDA is not available"))
    for extra, msg in cases:
        out = subprocess.run(base + extra, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and msg in out.stderr, (extra, out.stderr)


def test_training_trials_are_functions_of_their_key_too():
    from save_ros.eval.shard import drive
    from save_ros.eval.training_trial import TrainJob, TrainSpec

    spec = TrainSpec(model="digits_cnn", targets="weights", flips=(4096,), stuck_bit=-1,
                     pe_bits=(), trials=2, epochs=1, batch=128, lr=0.01, seed=0, threshold=0.02,
                     rollback=True, spike_factor=None, checkpoint_every=4)
    stores = []
    for execute in (in_process(), fresh_context_per_chunk_backwards):
        store = TrialStore(":memory:", {"spec": repr(spec)})
        meta, records, ex = drive(TrainJob(spec, 1, store.key), spec.keys(), execute, store,
                                  progress=False)
        assert ex["trials_run"] == 2 and meta["reference"]["steps"] > 0
        stores.append(json.dumps(records, sort_keys=True))  # NaN accuracies compare as text
    assert stores[0] == stores[1]
    recs = json.loads(stores[0])
    assert [r["seed"] for r in recs] == [0, 1]  # fault_seed(seed 0, config 0, trial t) = t
    assert all(r["plain"]["faults_applied"] == 4096 for r in recs)


def test_worker_processes_give_the_one_process_records():
    """--workers 2 on a CPU (the code path of one process per GPU, with devices cpu, cpu)."""
    from save_ros.eval.shard import processes

    store = TrialStore(":memory:", campaign_spec(CFG, SOURCE, "cpu"))
    res = run_sharded(CFG, SOURCE, processes(["cpu", "cpu"]), store, progress=False,
                      command=[])
    assert [reproducible(r) for r in store.records()] == reference()
    ex = res["execution"]
    assert ex["executor"] == "processes" and ex["workers"] == 2 and ex["trials_run"] == 20
    assert sum(ex["trials_per_worker"].values()) == 20
