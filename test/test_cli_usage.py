"""The CLI's usage: `--help` on every command and verb, a missing command is a usage error (exit
2), and output paths are checked before the work starts."""

from __future__ import annotations

import importlib.util
import subprocess

import pytest

from save_ros import cli

HAVE_ROS = importlib.util.find_spec("rclpy") is not None
VERBS = [(name,) for name in cli.COMMANDS] + [("bench", name) for name in cli.BENCH]


def _needs_ros(module: str) -> bool:
    return module.startswith("save_ros.ros.")


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_prints_its_help_and_exits_0(capsys, verb) -> None:
    module = (cli.BENCH[verb[1]] if verb[0] == "bench" else cli.COMMANDS[verb[0]])[0]
    if _needs_ros(module) and not HAVE_ROS:
        pytest.skip("ROS 2 (rclpy) is not installed")
    with pytest.raises(SystemExit) as exc:
        cli.main([*verb, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert out.startswith(f"usage: save-ros {' '.join(verb)}"), out[:200]
    assert "-h, --help" in out


def test_bare_save_ros_is_a_usage_error_with_the_command_list(capsys) -> None:
    assert cli.main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "usage: save-ros" in captured.err and "name a COMMAND" in captured.err
    for name in cli.COMMANDS:
        assert name in captured.err


def test_help_and_bench_help_exit_0_on_stdout(capsys) -> None:
    assert cli.main(["--help"]) == 0
    assert "watch" in capsys.readouterr().out
    assert cli.main(["bench", "--help"]) == 0
    assert "ros-failover" in capsys.readouterr().out
    assert cli.main(["bench"]) == 2  # a measurement is missing
    assert "usage: save-ros bench" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_ROS, reason="ROS 2 (rclpy) is not installed")
def test_save_node_help_prints_usage_and_does_not_start_the_node() -> None:
    from save_ros.ros.params import SPECS
    from save_ros.tools.process import node_command

    done = subprocess.run([*node_command(), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("usage: save_node")
    for spec in SPECS:  # every parameter, with its description
        assert f"  {spec.name} = " in out
        assert spec.description.split()[0] in out
    assert "digits_cnn.yaml" in out and "examples:" in out
    assert "[runtime]" in out  # which ones `ros2 param set` may change
    # nothing of a running node: no ROS log lines, no model loaded
    assert "[INFO]" not in done.stderr and "analysis" not in done.stderr


@pytest.mark.skipif(not HAVE_ROS, reason="ROS 2 (rclpy) is not installed")
def test_replay_refuses_an_existing_out_before_replaying(capsys, tmp_path) -> None:
    """Checked first: with --attach and no node, a late check would wait for the node instead."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "out_bag"
    out.mkdir()
    code = cli.main(["replay", str(repo / "bags" / "digits_mono8"), "--config",
                     str(repo / "config" / "digits_cnn.yaml"), "--attach", "--namespace",
                     "/nobody_here", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (f"save-ros replay: error: --out {out} exists; a rosbag2 is written "
                           "into a new folder: remove it or choose another path")


def test_a_json_path_that_is_a_folder_is_refused_before_the_run(capsys, tmp_path) -> None:
    with pytest.raises(SystemExit) as exc:  # argparse's error(): exit 2
        cli.main(["pvf", "--json", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--json {tmp_path} is a folder; give a file name" in err and "Traceback" not in err
