"""~/output in ROS terms: the message a task gets, and the fallback without vision_msgs."""

import pytest
import torch

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")

from std_msgs.msg import Header  # noqa: E402

from save_ros.ros.outputs import (  # noqa: E402
    OutputEncoder,
    OutputKind,
    OutputTypeError,
    choose_output,
    output_values,
    vision_msgs_available,
)


def test_classifier_gets_vision_msgs_where_installed_else_joint_state():
    assert choose_output("classification", "auto", vision=True) == (OutputKind.CLASSIFICATION,
                                                                     "")
    kind, note = choose_output("classification", "auto", vision=False)
    assert kind is OutputKind.JOINT_STATE and "vision_msgs is not installed" in note
    with pytest.raises(OutputTypeError, match="needs vision_msgs"):
        choose_output("classification", "classification", vision=False)
    with pytest.raises(OutputTypeError, match="needs task classification"):
        choose_output("control", "classification", vision=True)


def test_policy_gets_joint_state_or_float64_multi_array():
    assert choose_output("control", "auto", vision=True)[0] is OutputKind.JOINT_STATE
    kind, _ = choose_output("control", "float64_multi_array", vision=False)
    encoder = OutputEncoder(kind, "control", ["j1", "j2"])
    msg = encoder.message(torch.tensor([[0.25, -1.5]]), Header())
    assert list(msg.data) == [0.25, -1.5] and msg.layout.dim[0].size == 2
    assert output_values(msg) == [0.25, -1.5] and encoder.label_info(Header()) is None


def test_fallback_joint_state_for_a_classifier_here():
    kind, _ = choose_output("classification", "auto", vision_msgs_available())
    encoder = OutputEncoder(kind, "classification", ["cat", "dog"])
    msg = encoder.message(torch.tensor([[1.0, 3.0]]), Header(frame_id="cam"))
    values = output_values(msg)
    if kind is OutputKind.JOINT_STATE:
        assert values == [1.0, 3.0] and list(msg.effort) == [1.0]
    else:  # a distro with vision_msgs: class order, softmax scores, label map
        assert [h.class_id for h in msg.results] == ["cat", "dog"]
        assert values == pytest.approx(torch.softmax(torch.tensor([1.0, 3.0]), 0).tolist())
        labels = encoder.label_info(Header())
        assert [(c.class_id, c.class_name) for c in labels.class_map] == [(0, "cat"),
                                                                         (1, "dog")]
    assert msg.header.frame_id == "cam"
