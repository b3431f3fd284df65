"""save_node's configuration errors: early, one line, exit 2; silent defaults are warned about."""

import os
import subprocess
import sys
import time

import pytest

from save_ros.ros.paramfile import ParamsFileError, check_args, check_file, node_fqn

CONFIG = os.path.join(os.path.dirname(__file__), "..", "config", "digits_cnn.yaml")


def test_shipped_configs_apply_under_any_namespace():
    configs = os.path.join(os.path.dirname(__file__), "..", "config")
    for name in os.listdir(configs):
        assert check_file(os.path.join(configs, name), "/robot_1/perception/save_node") == [], \
            name


def test_a_section_that_matches_no_node_is_warned_about(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("save_node:\n  ros__parameters:\n    model: cartpole_policy\n")
    # rcl reads `save_node:` as /save_node: a namespaced node would silently ignore it
    assert check_file(str(path), "/save_node") == []
    [warning] = check_file(str(path), "/robot/save_node")
    assert "matches no node" in warning and "'/**:'" in warning
    path.write_text("other_node:\n  ros__parameters:\n    model: cartpole_policy\n")
    assert "section 'other_node' matches no node" in check_file(str(path), "/save_node")[0]


def test_empty_file_directory_and_yaml_errors(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert "is empty" in check_file(str(empty), "/save_node")[0]
    with pytest.raises(ParamsFileError, match="is a directory"):
        check_file(str(tmp_path), "/save_node")
    broken = tmp_path / "broken.yaml"
    broken.write_text("/**:\n  ros__parameters:\n    model: [a\n")
    with pytest.raises(ParamsFileError) as err:
        check_file(str(broken), "/save_node")
    assert "\n" not in str(err.value) and "line 4" in str(err.value)


def test_remaps_give_the_node_name_sections_are_matched_against():
    args = ["save_node", "--ros-args", "-r", "__ns:=/robot", "-r", "__node:=perception"]
    assert node_fqn(args) == "/robot/perception"
    assert check_args(args) == []


def _node(*params: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "save_ros.ros.node", "--ros-args"]
    for p in params:
        cmd += ["-p", p]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.ros
@pytest.mark.parametrize(
    ("param", "needle"),
    [
        ("output_names:=[a,b,c]", "output_names has 3 names but digits_cnn has 10 outputs"),
        ("input_topic:=camera/image raw", "is not a valid ROS topic name"),
        ("publish_policy:=sometimes", "publish_policy='sometimes' is not allowed"),
    ],
)
def test_parameter_errors_exit_2_in_one_line_before_the_model_loads(param, needle):
    pytest.importorskip("rclpy")
    done = _node(param, "analysis_cache:=/nonexistent/never_written.json")
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in done.stderr, lines
    assert "configured" not in done.stdout + done.stderr  # the model was never protected


@pytest.mark.ros
def test_unknown_parameter_and_foreign_section_are_warned_about(tmp_path):
    pytest.importorskip("rclpy")
    from save_ros.tools.process import NodeProcess

    params = tmp_path / "p.yaml"
    params.write_text("/**:\n  ros__parameters:\n    protect: false\n"
                      "camera_driver:\n  ros__parameters:\n    fps: 30\n")
    cmd = NodeProcess(None, namespace=f"params_{os.getpid()}",
                      overrides={"publish_polcy": "immediate", "autostart": False}).command()
    proc = subprocess.Popen(cmd + ["--params-file", str(params)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline, out = time.monotonic() + 60, ""
        while time.monotonic() < deadline and "camera_driver" not in out:
            line = proc.stdout.readline()
            if not line:
                break
            out += line
        assert "unknown parameter 'publish_polcy' is ignored; did you mean 'publish_policy'" \
            in out
        assert "section 'camera_driver' matches no node" in out
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
