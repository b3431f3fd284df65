"""`save-ros bench scale --what coverage` sharded: chunks as functions of their key, the store,
resume after a kill. A small zoo model (MobileNetV2 at 32 px) and chunks of 10 trials."""

import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

from save_ros.eval.bench import scale, scale_shard
from save_ros.eval.bench.scale_coverage import Outcome
from save_ros.eval.trial import TrialKey, reproducible

# 2 chunks of 10 per section (20 trials per fault section, 20 clean), one torch thread
OPTS = ["--models", "mobilenet_v2", "--device", "cpu", "--size", "32", "--what", "coverage",
        "--calibration", "8", "--trials", "40", "--clean", "20", "--chunk", "10", "--seed", "3",
        "--threads", "1"]
MODEL = "mobilenet_v2"
CHUNKS = 2 * len(scale_shard.SECTIONS)
COUNTED = (*Outcome.COUNTS, "examples", "planned", "complete")


def bench(tmp_path, name: str, *extra: str) -> dict:
    """Run the bench in this process (torch threads restored after); its coverage row."""
    out = tmp_path / f"{name}.json"
    threads = torch.get_num_threads()
    try:
        assert scale.main([*OPTS, "--out", str(out), *extra]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads(out.read_text())["models"][MODEL]["coverage"]["full"]


def counts(row: dict) -> dict:
    """Per-section counts (and SDC examples) of a coverage row."""
    return {s: {k: row[s][k] for k in COUNTED} for s in scale_shard.SECTIONS}


def chunk_records(path) -> list[dict]:
    """Every stored chunk in key order, without timings."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return [reproducible(json.loads(r)) for (r,) in db.execute(
            "SELECT record FROM trials ORDER BY method, point, trial")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The one-process run (no budget in the way), with its store."""
    tmp = tmp_path_factory.mktemp("ref")
    row = bench(tmp, "one", "--seconds", "100000", "--store", str(tmp / "one.sqlite"))
    return row, chunk_records(tmp / "one.sqlite")


def test_chunks_have_fixed_keys_and_seeds():
    sizes = scale_shard.section_sizes(trials=201, clean=120)
    assert sizes == {"weights_uniform": 100, "activations_uniform": 100, "weights_high": 100,
                     "activations_high": 100, "clean": 120}
    keys = scale_shard.row_keys("m/full", sizes)
    assert keys[:2] == [TrialKey("m/full/weights_uniform", 0, 0),
                        TrialKey("m/full/weights_uniform", 0, 1)]
    assert keys[-3:] == [TrialKey("m/full/clean", 4, c) for c in range(3)]  # 50 + 50 + 20


def test_one_process_run_is_whole_and_detects(reference):
    row, records = reference
    assert len(records) == CHUNKS and len({r["plan"]["fingerprint"] for r in records}) == 1
    assert len({r["draws"] for r in records}) == CHUNKS  # every chunk draws its own trials
    for s in scale_shard.SECTIONS:
        assert row[s]["trials"] == row[s]["planned"] == 20 and row[s]["complete"]
        assert row[s]["chunks"] == 2
    for s in scale_shard.SECTIONS[:4]:  # each flip is caught; none is silent
        assert row[s]["detected"] > 0 and row[s]["sdc"] == 0
    assert row["weights_high"]["raw_changed"] > 0  # the faults were real: outputs changed
    assert row["clean"]["detected"] == 0
    ex = row["execution"]
    assert ex["executor"] == "in_process" and ex["chunks_run"] == CHUNKS
    assert ex["trials_run"] == 100 and ex["conflicts"] == 0


def test_two_worker_processes_give_the_one_process_counts(reference, tmp_path):
    row = bench(tmp_path, "two", "--workers", "2", "--store", str(tmp_path / "two.sqlite"))
    assert counts(row) == counts(reference[0])
    assert chunk_records(tmp_path / "two.sqlite") == reference[1]  # chunk by chunk
    ex = row["execution"]
    assert ex["executor"] == "processes" and ex["workers"] == 2
    assert sum(ex["store_chunks_per_worker"].values()) == CHUNKS
    assert ex["duplicates_ignored"] == 0


def test_seconds_budget_stops_a_one_process_section_at_a_chunk(tmp_path, capsys):
    row = bench(tmp_path, "cut", "--seconds", "0.001", "--store", str(tmp_path / "c.sqlite"))
    # each section runs its first chunk, then finds its budget spent
    assert [row[s]["trials"] for s in scale_shard.SECTIONS] == [10] * 5
    assert not row["weights_uniform"]["complete"]
    assert "stopped by --seconds" in capsys.readouterr().out
    again = bench(tmp_path, "rest", "--seconds", "100000", "--store", str(tmp_path / "c.sqlite"),
                  "--resume")
    assert again["execution"]["chunks_resumed"] == 5 and again["execution"]["chunks_run"] == 5
    # a chunk stored under another protection plan (another analysis or code) is refused
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        (rec,) = db.execute("SELECT record FROM trials WHERE trial = 1 LIMIT 1").fetchone()
        rec = json.loads(rec)
        rec["plan"]["fingerprint"] = "0" * 16
        db.execute("UPDATE trials SET record = ? WHERE method = ? AND trial = 1",
                   (json.dumps(rec), rec["method"]))
    with pytest.raises(scale_shard.CoverageShardError, match="2 different protection plans"):
        bench(tmp_path, "mixed", "--store", str(tmp_path / "c.sqlite"), "--resume")


def _rows(path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_a_killed_run_resumes_with_no_chunk_lost_or_repeated(reference, tmp_path):
    store, out = tmp_path / "k.sqlite", tmp_path / "k.json"
    cmd = [sys.executable, "-m", "save_ros.cli", "bench", "scale", *OPTS, "--seconds", "100000",
           "--store", str(store)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 180
        while time.monotonic() < end and proc.poll() is None and _rows(store) < 1:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    at_kill = _rows(store)
    assert 0 < at_kill < CHUNKS, f"the kill must land mid-run ({at_kill}/{CHUNKS} chunks)"
    again = subprocess.run(cmd + ["--resume", "--out", str(out)], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    row = json.loads(out.read_text())["models"][MODEL]["coverage"]["full"]
    ex = row["execution"]
    assert ex["chunks_resumed"] >= at_kill and ex["chunks_resumed"] + ex["chunks_run"] == CHUNKS
    assert chunk_records(store) == reference[1]  # none lost, none twice, each as in one run
    assert counts(row) == counts(reference[0])


def test_bad_store_and_worker_options_are_clear_errors(tmp_path, capsys):
    from save_ros import cli

    cases = [(["--resume"], "--resume needs --store"),
             (["--workers", "-1"], "--workers must be >= 0"),
             (["--store", str(tmp_path / "none.sqlite"), "--resume"], "does not exist")]
    for extra, msg in cases:
        code = cli.main(["bench", "scale", *OPTS, *extra])
        err = capsys.readouterr().err
        assert code == 2 and msg in err and "Traceback" not in err, (extra, err)
