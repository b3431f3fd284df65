"""`--model package.module:factory`: a user's model in campaign / pvf / analyze."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from save_ros import cli

HERE = Path(__file__).resolve().parent
SHAPE = ("--input-shape", "3,8,8", "--input-range", "0,1")


@pytest.fixture(autouse=True)
def importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))  # foreign_nets.py lives beside this file


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def test_campaign_on_a_classifier_by_import_path(capsys, tmp_path):
    code, out, err = run_cli(capsys, "robustness", "campaign",
                             "--model", "foreign_nets:make_classifier",
                             *SHAPE, "--flips", "0,64", "--trials", "2", "--batch", "16",
                             "--target", "both", "--bits", "30", "--quiet",
                             "--json", str(tmp_path / "c.json"))
    assert code == 0, err
    res = json.loads((tmp_path / "c.json").read_text())
    assert res["model"]["name"] == "foreign_nets:make_classifier"
    assert res["model"]["eval_data"]["uniform_box"] == [0.0, 1.0]
    assert res["methods"]["unprotected"]["clean_accuracy"] == 1.0  # labels = own top-1
    assert res["activation_sites"]["naming"] == "fx"
    zero, many = res["points"]
    assert zero["sdc"]["count"] == 0 and many["changed"]["count"] > 0
    assert "activation sites: fx" in out


def test_regression_model_is_scored_within_a_tolerance(capsys, tmp_path):
    x = torch.rand(10, 6) * 2 - 1
    torch.save(x, tmp_path / "x.pt")
    code, out, err = run_cli(capsys, "robustness", "campaign",
                             "--model", "foreign_nets:make_regressor",
                             "--inputs", str(tmp_path / "x.pt"), "--task", "regression",
                             "--flips", "0,1", "--bits", "30", "--trials", "3", "--quiet",
                             "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["model"]["task"] == "regression"
    assert res["model"]["eval_data"]["n"] == 5 and res["model"]["eval_data"]["calib"] == 5
    zero, one = res["points"]
    assert zero["accuracy"]["mean"] == 1.0 and zero["changed"]["count"] == 0
    # an exponent flip of a weight moves some output far beyond 1e-3 relative
    assert one["changed"]["count"] > 0 and one["accuracy"]["mean"] < 1.0
    assert "within tol" in out


def test_campaign_on_a_two_input_policy_with_two_input_shapes(capsys, tmp_path):
    code, out, err = run_cli(capsys, "robustness", "campaign",
                             "--model", "foreign_nets:make_policy",
                             "--input-shape", "3,8,8", "--input-shape", "7",
                             "--input-range", "0,1", "--input-range=-1,1",
                             "--task", "control", "--method", "unprotected,save",
                             "--flips", "0,4", "--trials", "2", "--batch", "4",
                             "--target", "both", "--bits", "30", "--quiet",
                             "--json", str(tmp_path / "p.json"))
    assert code == 0, err
    res = json.loads((tmp_path / "p.json").read_text())
    assert res["model"]["task"] == "regression"  # control: every action within tolerance
    assert res["model"]["eval_data"]["uniform_box"] == [[0.0, 1.0], [-1.0, 1.0]]
    points = {(p["method"], p["flips"]): p for p in res["points"]}
    assert points[("unprotected", 0)]["changed"]["count"] == 0
    assert points[("save", 0)]["changed"]["count"] == 0
    assert points[("unprotected", 4)]["changed"]["count"] > 0  # exponent flips do harm
    assert points[("save", 4)]["sdc"]["count"] == 0
    assert res["methods"]["save"]["activation_sites"] > 0


def test_pvf_and_analyze_take_a_two_input_policy(capsys):
    policy = ("--model", "foreign_nets:make_policy", "--input-shape", "3,8,8",
              "--input-shape", "7", "--input-range", "0,1", "--input-range=-1,1",
              "--task", "control")
    code, out, err = run_cli(capsys, "robustness", "pvf", *policy, "--samples", "4", "--batch", "4")
    assert code == 0, err
    assert "head" in out
    code, out, err = run_cli(capsys, "analyze", *policy, "--calibration", "16", "--validate",
                             "--per-class", "20", "--eval-inputs", "8")
    assert code == 0, err
    assert "save-ros analyze foreign_nets:make_policy" in out
    assert "validation: 20 flips per class, 8 test inputs" in out


def test_campaign_with_an_integer_input(capsys, tmp_path):
    code, _, err = run_cli(capsys, "robustness", "campaign",
                           "--model", "foreign_nets:make_token_policy",
                           "--input-shape", "8", "--input-shape", "4",
                           "--input-range", "int:0,19", "--input-range", "0,1",
                           "--task", "regression", "--flips", "0,2", "--trials", "2",
                           "--batch", "4", "--target", "activations", "--quiet",
                           "--json", str(tmp_path / "t.json"))
    assert code == 0, err
    res = json.loads((tmp_path / "t.json").read_text())
    assert res["model"]["eval_data"]["uniform_box"] == [[0, 19], [0.0, 1.0]]
    assert res["points"][0]["changed"]["count"] == 0


def test_pvf_and_analyze_take_an_import_path(capsys, tmp_path):
    code, out, err = run_cli(capsys, "robustness", "pvf",
                             "--model", "foreign_nets:make_classifier", *SHAPE,
                             "--samples", "4", "--batch", "8")
    assert code == 0, err
    assert "3 " in out and out.count("\n") >= 3  # one row per parameterised layer
    code, out, err = run_cli(capsys, "analyze", "--model", "foreign_nets:make_classifier",
                             *SHAPE, "--eval-inputs", "8")
    assert code == 0, err
    assert "save-ros analyze foreign_nets:make_classifier" in out


@pytest.mark.parametrize("argv, needle", [
    (("--model", "no_such_pkg.nets:make"), "cannot import 'no_such_pkg.nets'"),
    (("--model", "foreign_nets:nothing", *SHAPE), "has no attribute 'nothing'"),
    (("--model", "foreign_nets:not_a_model", *SHAPE), "returned int, not a torch.nn.Module"),
    (("--model", "foreign_nets:LAYERS", *SHAPE), "not a callable"),
    (("--model", "foreign_nets:broken", *SHAPE), "raised RuntimeError: no GPU here"),
    (("--model", "foreign_nets:make_classifier"), "needs --input-shape and --input-range"),
    (("--model", "foreign_nets:make_classifier", "--input-range", "0,1"), "needs --input-shape"),
    (("--model", "foreign_nets:make_classifier", "--input-shape", "1,8,8", "--input-range",
      "0,1"), "fails on inputs of shape (N, 1, 8, 8)"),
    (("--model", "foreign_nets:make_regressor", "--input-shape", "6", "--input-range", "0,1",
      "--task", "classification", "--inputs", "/nonexistent.pt"), "cannot load a tensor"),
    (("--model", "digits_cnn", "--input-shape", "3"), "--input-shape is for a model given by"),
    (("--model", "foreign_nets:make_classifier", "--input-shape", "3,8,8", "--input-range",
      "1,0"), "LOW must be below HIGH"),
    (("--model", "foreign_nets:make_policy", "--input-shape", "3,8,8", "--input-shape", "7",
      "--input-range", "0,1", "--input-range", "0,1", "--input-range", "0,1"),
     "2 --input-shape but 3 --input-range"),
    (("--model", "foreign_nets:make_policy", "--input-shape", "3,8,8", "--input-range", "0,1"),
     "fails on inputs of shape (N, 3, 8, 8)"),
])
@pytest.mark.parametrize("command", ["campaign", "pvf"])  # save-ros robustness COMMAND
def test_bad_model_arguments_are_one_line_exit_2(capsys, argv, needle, command):
    code, _, err = run_cli(capsys, "robustness", command, *argv)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


def test_console_command_exit_code(tmp_path):
    """The real entry point: a bad import path exits 2 with one line on stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    proc = subprocess.run([sys.executable, "-m", "save_ros.cli", "robustness", "campaign",
                           "--model", "foreign_nets:not_a_model", *SHAPE], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not a torch.nn.Module" in proc.stderr


def test_campaign_on_a_torch_export_file(capsys, tmp_path):
    """A .pt2 program loads through the same loader; its input shape comes from the program."""
    import foreign_nets

    net = foreign_nets.make_classifier().eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(net, (torch.zeros(2, 3, 8, 8),),
                                          dynamic_shapes=({0: batch},)), tmp_path / "n.pt2")
    code, _, err = run_cli(capsys, "robustness", "campaign", "--model", str(tmp_path / "n.pt2"),
                           "--input-range", "0,1", "--flips", "0,64", "--trials", "2",
                           "--batch", "16", "--bits", "30", "--quiet",
                           "--json", str(tmp_path / "c.json"))
    assert code == 0, err
    zero, many = json.loads((tmp_path / "c.json").read_text())["points"]
    assert zero["sdc"]["count"] == 0 and many["changed"]["count"] > 0
    torch.export.save(torch.export.export(net, (torch.zeros(1, 3, 8, 8),)), tmp_path / "s.pt2")
    code, _, err = run_cli(capsys, "robustness", "campaign", "--model", str(tmp_path / "s.pt2"),
                           "--input-range", "0,1", "--quiet")
    assert code == 2 and "export it with a dynamic batch dimension" in err


def test_campaign_on_a_zoo_policy_by_name(capsys, tmp_path):
    code, _, err = run_cli(capsys, "robustness", "campaign", "--model", "visuomotor_tiny",
                           "--method", "unprotected,save", "--flips", "0,4", "--bits", "30",
                           "--trials", "2", "--batch", "2", "--target", "weights", "--quiet",
                           "--tolerance", "1e-3,1e-5", "--json", str(tmp_path / "v.json"))
    assert code == 0, err
    res = json.loads((tmp_path / "v.json").read_text())
    assert res["model"]["task"] == "regression"  # control: every action element in tolerance
    assert res["model"]["eval_data"]["input_names"] == ["image", "joint_state"]
    points = {(p["method"], p["flips"]): p for p in res["points"]}
    assert points[("unprotected", 0)]["changed"]["count"] == 0
    assert points[("unprotected", 4)]["changed"]["count"] > 0  # exponent flips move actions
    assert points[("save", 4)]["sdc"]["count"] == 0
    # a policy has its own inputs: --input-shape is refused with one line
    code, _, err = run_cli(capsys, "robustness", "campaign", "--model", "visuomotor_tiny",
                           *SHAPE)
    assert code == 2 and "registry model with its own inputs" in err
