"""A user mistake on the command line gets one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from save_ros import cli, models
from save_ros.ros import node

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "config" / "digits_cnn.yaml")
BAG = str(REPO / "bags" / "digits_mono8")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """`save-ros ARGV` in-process: (exit code, stderr); argparse's SystemExit counts as a code."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def assert_one_line(err: str, *needles: str) -> None:
    """stderr is one line, holds every needle and no traceback."""
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("argv, needles", [
    (("demo", "--rate", "0"), ("save-ros demo: error:", "--rate", "> 0")),
    (("demo", "--every", "0"), ("--every", ">= 1")),
    (("demo", "--flips", "-3"), ("--flips", ">= 1")),
    (("replay", BAG, "--config", CONFIG, "--rate", "nan"), ("--rate", "finite")),
    (("replay", BAG, "--config", CONFIG, "--limit", "-1"), ("--limit", ">= 0")),
    (("robustness", "pvf", "--batch", "0"), ("--batch", ">= 1")),
    (("bench", "failover", "--reps", "0"), ("--reps", ">= 1")),
    (("bench", "failover", "--burst", "-1"), ("--burst", ">= 0")),
    (("bench", "failover", "--hang-timeout", "0"), ("--hang-timeout",)),
    (("maintainer", "train", "--threads", "0"), ("--threads", ">= 1")),
    (("analyze", "--per-class", "0"), ("--per-class", ">= 1")),
    (("robustness", "campaign", "--flips", "abc"),
     ("save-ros robustness campaign: error:", "--flips", "--help")),
    (("robustness", "campaign", "--bits", "31-23"), ("--bits", "low-high")),
    (("robustness", "campaign", "--method", ","), ("--method",)),
    (("bench", "cpu", "--n", "0"), ("--n", ">= 1")),
    (("bench", "cpu", "--sweep", "abc"), ("--sweep", "fraction")),
    (("bench", "scale", "--dtypes", "fp8"), ("'fp8'", "fp32,fp16")),
    (("bench", "scale", "--batches", "1,0"), ("--batches", ">= 1")),
    (("bench", "ros-failover", "--crashes", "0"), ("--crashes", ">= 1")),
    (("bench", "nosuch"), ("save-ros bench: error:", "invalid choice: 'nosuch'", "ros-failover")),
    (("robustness", "training", "--stuck-bit", "40"), ("--stuck-bit", "0..31")),
    (("robustness", "training", "--spike-factor", "0"), ("--spike-factor", "> 1")),
    (("nosuch",), ("save-ros: error:", "invalid choice: 'nosuch'", "bench")),
    (("robustness", "nosuch"), ("save-ros robustness: error:", "invalid choice: 'nosuch'",
                                "campaign")),
    (("maintainer", "nosuch"), ("save-ros maintainer: error:", "invalid choice: 'nosuch'",
                                "train-zoo")),
])
def test_bad_argument_value_is_one_argparse_line(capsys, argv, needles) -> None:
    """Values that used to divide by zero, hang, or print a table of NaN are refused up front."""
    code, err = run_cli(capsys, *argv)
    assert code == 2
    assert_one_line(err, *needles)


@pytest.mark.parametrize("argv, needles", [
    (("robustness", "demo", "--model", "nosuch"), ("unknown model 'nosuch'", "digits_cnn")),
    (("bench", "cpu", "--model", "nosuch"), ("save-ros bench cpu: error:",
                                              "unknown model 'nosuch'")),
    (("demo", "--model", "nosuch"), ("unknown model 'nosuch'",)),
    (("demo", "--model", "cartpole_policy"), ("control model", "digits_cnn")),
    (("robustness", "demo", "--trials", "0"), ("trials",)),
    (("analyze", "--margin", "-1"), ("--margin must be >= 0",)),
    (("analyze", "--fraction", "2"), ("--fraction must lie in (0, 1]",)),
    (("analyze", "--out", "/tmp/analysis.txt"), (".json, .yaml or .yml",)),
    (("robustness", "training", "--targets", "nosuch"), ("'nosuch'", "weights, activations")),
    (("replay", BAG, "--config", "/nonexistent/node.yaml"), ("/nonexistent/node.yaml",)),
    (("replay", BAG, "--config", str(REPO / "README.md")), ("not valid YAML",)),
    (("replay", "/nonexistent/bag", "--config", CONFIG), ("/nonexistent/bag", "does not exist")),
    (("replay", str(REPO / "bags" / "cartpole_states"), "--config", CONFIG),
     ("0 topics of type sensor_msgs/msg/Image", "use a config")),
    (("replay", str(REPO / "bags" / "cartpole_states"), "--config", CONFIG,
      "--topic", "/cartpole/joint_states"), ("carries sensor_msgs/msg/JointState",)),
    (("replay", BAG, "--config", CONFIG, "--topic", "/nosuch"), ("no topic /nosuch",)),
    (("replay", str(REPO / "README.md"), "--config", CONFIG), ("cannot read the bag",)),
    (("replay", BAG, "--config", CONFIG, "-p", "nonsense"), ("NAME:=VALUE",)),
])
def test_bad_input_found_by_run_is_one_line(capsys, argv, needles) -> None:
    """Unknown names, missing or broken files, wrong bags: one line naming the problem, exit 2."""
    code, err = run_cli(capsys, *argv)
    assert code == 2
    assert_one_line(err, *needles)


@pytest.mark.parametrize("argv", [
    ("analyze", "--out"), ("robustness", "campaign", "--flips", "1", "--trials", "1", "--json"),
    ("robustness", "pvf", "--samples", "1", "--json"),
    ("robustness", "demo", "--trials", "1", "--json"),
])
def test_output_under_a_file_is_refused_before_the_run(capsys, tmp_path, argv) -> None:
    """An output path under a regular file fails up front, not after the run with a trace."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = run_cli(capsys, *argv, str(blocker / "sub" / "x.json"))
    assert code == 2
    verb = " ".join(w for w in argv if not w.startswith("-") and not w[0].isdigit())
    assert_one_line(err, f"save-ros {verb}: error:", f"{blocker} is a file, not a folder")


def test_train_out_that_is_a_file(capsys, tmp_path) -> None:
    """`train --out FILE` is refused before any training."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = run_cli(capsys, "maintainer", "train", "--model", "cartpole_policy",
                        "--out", str(blocker))
    assert code == 2
    assert_one_line(err, "--out", "is a file")


@pytest.mark.parametrize("text, needle", [
    ("- 1\n- 2\n", "no '<node>: ros__parameters:' section"),
    ("", "no '<node>: ros__parameters:' section"),
    ("other_node:\n  ros__parameters:\n    model: cartpole_policy\n", "do not apply to save_node"),
])
def test_replay_config_that_save_node_would_ignore(capsys, tmp_path, text, needle) -> None:
    """A config without a save_node section is refused, not replayed with the node's defaults."""
    config = tmp_path / "node.yaml"
    config.write_text(text)
    code, err = run_cli(capsys, "replay", BAG, "--config", str(config))
    assert code == 2
    assert_one_line(err, needle)


def test_replay_exits_cleanly_when_the_node_refuses_its_parameters() -> None:
    """save_node dying at start: replay says why and exits 2 (it used to abort, exit 134)."""
    done = subprocess.run([sys.executable, "-m", "save_ros.cli", "replay", BAG, "--config",
                           CONFIG, "-p", "publish_policy:=sometimes", "--limit", "2"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2, done.stderr
    assert "publish_policy='sometimes' is not allowed" in done.stderr
    assert "terminate called" not in done.stderr and "Traceback" not in done.stderr
    assert "remap rule" not in done.stderr  # -p is for the node, not the replay client


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU this would run the benchmark")
def test_bench_scale_on_cuda_without_cuda(capsys) -> None:
    """No CUDA: one line that points to the CPU."""
    code, err = run_cli(capsys, "bench", "scale", "--device", "cuda")
    assert code == 2
    assert_one_line(err, "no CUDA device", "--device cpu")


def test_user_errors_and_bugs_are_told_apart() -> None:
    """Project errors, paths and YAML are the user's; a bare ValueError is a bug."""
    assert cli.user_error_message(ZeroDivisionError("float division by zero")) is None
    assert cli.user_error_message(ValueError("could not convert string to float")) is None
    assert cli.user_error_message(RuntimeError("set_num_threads expects a positive int")) is None
    with pytest.raises(models.UnknownModelError) as info:
        models.get_spec("nosuch")
    assert cli.user_error_message(info.value).startswith("unknown model 'nosuch'")
    missing = FileNotFoundError(2, "No such file or directory", "/x/y.yaml")
    assert cli.user_error_message(missing) == "/x/y.yaml: No such file or directory"
    with pytest.raises(yaml.YAMLError) as bad:
        yaml.safe_load("a: [1,\nb: }")
    msg = cli.user_error_message(bad.value)
    assert msg is not None and msg.startswith("not valid YAML") and "\n" not in msg


def test_bug_in_a_subcommand_keeps_its_traceback(monkeypatch) -> None:
    """A genuine bug raised by run() propagates (exit 1 with a traceback), it is not dressed up."""
    from save_ros.eval import pvf

    def broken(args):  # stands in for a bug deep inside a subcommand
        return 1 // 0

    monkeypatch.setattr(pvf, "run", broken)
    with pytest.raises(ZeroDivisionError):
        cli.main(["robustness", "pvf"])


def test_save_node_missing_or_broken_params_file(capsys, tmp_path) -> None:
    """save_node exits 2 with one line for a params file that is missing or not YAML."""
    code = node.main(["save_node", "--ros-args", "--params-file", str(tmp_path / "none.yaml")])
    assert code == node.EXIT_BAD_PARAMETER
    assert_one_line(capsys.readouterr().err, "params file", "does not exist")
    broken = tmp_path / "broken.yaml"
    broken.write_text(json.dumps("x") + "\n: : [\n")
    code = node.main(["save_node", "--ros-args", "--params-file", str(broken)])
    assert code == node.EXIT_BAD_PARAMETER
    # rcl's two-line YAML error is now one line that says where
    assert_one_line(capsys.readouterr().err, "is not valid YAML (line 2, column")


def test_save_node_corrupt_model_file_is_one_line(tmp_path) -> None:
    """A model_file that torch cannot read: exit 3 and one line, not torch's weights_only essay."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    done = subprocess.run([sys.executable, "-m", "save_ros.ros.node", "--ros-args", "-p",
                           f"model_file:={bad}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == node.EXIT_MODEL, done.stderr
    assert_one_line(done.stderr, "neither TorchScript nor a state dict", "torch.save")
