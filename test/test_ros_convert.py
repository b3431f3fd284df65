"""Message conversion: images and arrays into model inputs, results and status out (no node)."""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")

from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Float32MultiArray, Header  # noqa: E402

from save_ros.ros import convert  # noqa: E402
from save_ros.tools.bundled import digits_image  # noqa: E402

DIGITS = convert.InputSpec(shape=(1, 8, 8), low=(0.0,), high=(1.0,))
POLICY = convert.InputSpec(shape=(4,), low=(-1.0,) * 4, high=(1.0,) * 4)


def _image(pixels: np.ndarray, encoding: str) -> Image:
    msg = Image()
    msg.height, msg.width = pixels.shape[:2]
    msg.encoding = encoding
    msg.step = pixels.strides[0]
    msg.data = np.ascontiguousarray(pixels).tobytes()
    return msg


def test_mono8_64x64_becomes_8x8_block_means_in_unit_range():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    x = convert.image_to_tensor(_image(pixels, "mono8"), DIGITS)
    expected = pixels.reshape(8, 8, 8, 8).mean(axis=(1, 3)) / 255.0
    assert x.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(x[0, 0].numpy(), expected, rtol=1e-6)


def test_bundled_bag_frame_round_trips_to_the_digit():
    digit = torch.arange(64, dtype=torch.float32).reshape(8, 8) / 63.0
    x = convert.image_to_tensor(digits_image(digit.numpy(), 8, 0, "camera"), DIGITS)
    # mono8 quantises to 1/255; the block mean of equal pixels is that pixel
    assert torch.allclose(x[0, 0], digit, atol=0.5 / 255)


def test_rgb8_and_bgr8_of_one_picture_agree_and_use_luma():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    a = convert.image_to_tensor(_image(rgb, "rgb8"), DIGITS)
    b = convert.image_to_tensor(_image(rgb[..., ::-1].copy(), "bgr8"), DIGITS)
    assert torch.equal(a, b)
    grey = (rgb.astype(np.float32) / 255.0) @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(a[0, 0].numpy(), grey.reshape(8, 2, 8, 2).mean(axis=(1, 3)),
                               rtol=1e-5)


def test_32fc1_values_are_taken_as_model_units_big_endian_too():
    values = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    little = convert.image_to_tensor(_image(values, "32FC1"), DIGITS)
    big = _image(values.astype(">f4"), "32FC1")
    big.is_bigendian = 1
    assert torch.equal(little[0, 0], torch.from_numpy(values))
    assert torch.equal(convert.image_to_tensor(big, DIGITS), little)


def test_step_padding_is_skipped():
    pixels = np.zeros((8, 12), dtype=np.uint8)
    pixels[:, :8] = 255  # the 4 padding bytes per row hold zeros the decoder must skip
    msg = _image(pixels, "mono8")
    msg.width = 8
    assert torch.equal(convert.image_to_tensor(msg, DIGITS), torch.ones(1, 1, 8, 8))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: setattr(m, "encoding", "yuv422"), "unsupported image encoding"),
        (lambda m: setattr(m, "data", bytes(100)), r"bytes, but step\*height"),
        (lambda m: setattr(m, "step", 10), "step 10 is smaller"),
        (lambda m: (setattr(m, "height", 0), setattr(m, "data", b"")), "empty image"),
    ],
)
def test_bad_images_raise_input_error(change, message):
    msg = _image(np.zeros((64, 64), dtype=np.uint8), "mono8")
    change(msg)
    with pytest.raises(convert.InputError, match=message):
        convert.image_to_tensor(msg, DIGITS)


def test_a_smaller_image_is_enlarged_bilinearly():
    # upscaling used to be refused; a 4x4 camera now feeds an 8x8 model
    msg = _image(np.full((4, 4), 255, dtype=np.uint8), "mono8")
    assert torch.equal(convert.image_to_tensor(msg, DIGITS), torch.ones(1, 1, 8, 8))


def test_nan_image_is_refused():
    values = np.zeros((8, 8), dtype=np.float32)
    values[3, 3] = math.nan
    with pytest.raises(convert.InputError, match="NaN"):
        convert.image_to_tensor(_image(values, "32FC1"), DIGITS)


def test_image_for_a_vector_model_is_refused():
    with pytest.raises(convert.InputError, match="not images"):
        convert.image_to_tensor(_image(np.zeros((8, 8), np.uint8), "mono8"), POLICY)


def test_joint_state_reordered_by_name():
    msg = JointState(name=["c", "a", "d", "b"], position=[3.0, 1.0, 4.0, 2.0])
    x = convert.joint_state_to_tensor(msg, POLICY, ("a", "b", "c", "d"))
    assert x.tolist() == [[1.0, 2.0, 3.0, 4.0]]
    with pytest.raises(convert.InputError, match="lacks joints"):
        convert.joint_state_to_tensor(msg, POLICY, ("a", "b", "c", "e"))


def test_joint_state_with_a_duplicated_name_is_refused():
    # it used to take the last value of the joint silently
    msg = JointState(name=["a", "b", "a", "c", "d"], position=[1.0, 2.0, 9.0, 3.0, 4.0])
    with pytest.raises(convert.InputError, match=r"more than once: \['a'\]") as err:
        convert.joint_state_to_tensor(msg, POLICY, ("a", "b", "c", "d"))
    assert err.value.kind == "names"


def test_joint_state_reject_reason_stays_short_for_10000_names():
    names = [f"joint_{i}" for i in range(10_000)]
    msg = JointState(name=names, position=[0.0] * 10_000)
    with pytest.raises(convert.InputError) as err:
        convert.joint_state_to_tensor(msg, POLICY, ("a", "b", "c", "d"))
    assert len(str(err.value)) < 600
    status = convert.diagnostic_status("n", "cpu", b"\x02", "x" * 100_000, {"k": "v" * 10_000})
    assert len(status.message) <= convert.MAX_STATUS_TEXT
    assert len(status.values[0].value) <= convert.MAX_STATUS_TEXT


def test_arrays_of_wrong_length_or_nan_are_refused():
    with pytest.raises(convert.InputError, match="has 3 values"):
        convert.multiarray_to_tensor(Float32MultiArray(data=[0.0, 1.0, 2.0]), POLICY)
    with pytest.raises(convert.InputError, match="NaN"):
        convert.multiarray_to_tensor(Float32MultiArray(data=[0.0, math.inf, 2.0, 1.0]), POLICY)
    x = convert.multiarray_to_tensor(Float32MultiArray(data=[0.5, 1.0, 2.0, 3.0]), POLICY)
    assert x.shape == (1, 4)


def test_result_message_carries_stamp_names_scores_and_decision():
    header = Header(frame_id="camera")
    header.stamp.sec, header.stamp.nanosec = 12, 34
    logits = torch.tensor([[0.5, 3.0, -1.0]])
    msg = convert.result_message(logits, header, "classification", ["a", "b", "c"])
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (12, 34,
                                                                                      "camera")
    assert list(msg.name) == ["a", "b", "c"]
    assert list(msg.position) == [0.5, 3.0, -1.0]
    assert math.isclose(sum(msg.velocity), 1.0) and max(msg.velocity) == msg.velocity[1]
    assert list(msg.effort) == [1.0]
    policy = convert.result_message(torch.tensor([[2.0, -2.0]]), header, "discrete_control",
                                    convert.output_names("control", 2))
    assert list(policy.name) == ["action_0", "action_1"] and list(policy.velocity) == []
    assert list(policy.effort) == [0.0]
    # a continuous policy's argmax means nothing: names and values only
    continuous = convert.result_message(torch.tensor([[0.3, -0.7]]), header, "control",
                                        ["shoulder", "elbow"])
    assert list(continuous.position) == pytest.approx([0.3, -0.7])
    assert list(continuous.effort) == [] and list(continuous.velocity) == []
