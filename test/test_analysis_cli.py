"""`save-ros analyze` end to end on the bundled policy: table, saved analysis, validation."""

import json

from save_ros.cli import main
from save_ros.core.analysis import Analysis


def test_analyze_cli_prints_table_saves_and_validates(tmp_path, capsys):
    out, report = tmp_path / "policy.yaml", tmp_path / "report.json"
    rc = main(["analyze", "--model", "cartpole_policy", "--calibration", "128", "--out", str(out),
               "--report", str(report), "--validate", "--per-class", "40", "--eval-inputs", "64"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "fc1.weight" in text and "total weights" in text and "validation: 40 flips" in text
    a = Analysis.load(out)
    assert {"fc1.weight", "fc3.bias", "fc1", "relu1", "fc3"} <= set(a.tensors)
    rep = json.loads(report.read_text())
    v = rep["validation"]
    assert v["weights"]["robust"]["flips"] == 40 and v["weights"]["robust"]["changed"] == 0
    assert v["weights"]["ranging"]["inside_range"] == 0
    assert v["activations"]["ranging"]["inside_range"] == 0
    assert rep["totals"]["weight"]["bits"] == 32 * sum(
        t.numel for t in a.weights())


def test_analyze_cli_rejects_bad_calibration_count(capsys):
    assert main(["analyze", "--model", "cartpole_policy", "--calibration", "0"]) == 2
    assert "--calibration must be >= 1" in capsys.readouterr().err
