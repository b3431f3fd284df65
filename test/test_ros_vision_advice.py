"""Where vision_msgs is missing, the node's advice fits the install: apt for a sourced distro
(with its real name, not a literal `$ROS_DISTRO`), a distro for a PyPI-only install."""

from __future__ import annotations

import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")

from save_ros.ros.outputs import OutputTypeError, choose_output, vision_msgs_advice  # noqa: E402


def test_a_sourced_distro_gets_apt_with_its_name(monkeypatch) -> None:
    monkeypatch.setenv("ROS_DISTRO", "jazzy")
    _, note = choose_output("classification", "auto", vision=False)
    assert "sudo apt install ros-jazzy-vision-msgs" in note and "$" not in note
    with pytest.raises(OutputTypeError, match="ros-jazzy-vision-msgs"):
        choose_output("classification", "classification", vision=False)


def test_a_pypi_install_is_told_vision_msgs_needs_a_distro(monkeypatch) -> None:
    monkeypatch.delenv("ROS_DISTRO", raising=False)
    _, note = choose_output("classification", "auto", vision=False)
    assert "vision_msgs is not on PyPI: source a ROS 2 distro" in note
    assert "$" not in note and "sudo" not in note
    assert vision_msgs_advice("") == vision_msgs_advice()
