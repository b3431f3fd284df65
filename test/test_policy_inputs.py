"""A user's policy of several inputs as save_node loads it (no ROS): the per-topic input
requests bound to the forward by name, each input's box from its `input_ranges` text, integer
inputs exact, and calibration files of one batch per input."""

import os
import sys

import numpy as np
import pytest
import torch

from save_ros.models.loader import ModelLoadError
from save_ros.preprocess import InputError, InputSpec, check_in_box, int_array_to_input
from save_ros.ros.calibration import CalibrationError, sets_from_file
from save_ros.ros.model_source import ModelRequest, load
from save_ros.ros.policy_model import InputRequest, bind, range_spec

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import user_policy  # noqa: E402

JOINT_RANGE = ",".join(f"{lo}:{hi}" for lo, hi in zip(user_policy.LOW, user_policy.HIGH,
                                                      strict=True))


def IMAGE_BOX(channels):  # noqa: N802 (what the node's image preprocessing gives)
    return (0.0,), (1.0,)


def _requests(order=("image", "state", "task")) -> tuple[InputRequest, ...]:
    each = {"image": InputRequest("image", (3, 32, 32), "", image=True),
            "state": InputRequest("state", (7,), JOINT_RANGE),
            "task": InputRequest("task", (1,), "int:0,3")}
    return tuple(each[name] for name in order)


def test_range_text_forms():
    assert range_spec("x", (3,), "-1,2") == InputSpec((3,), (-1.0,) * 3, (2.0,) * 3)
    assert range_spec("x", (2,), "-1:1, 0:5") == InputSpec((2,), (-1.0, 0.0), (1.0, 5.0))
    assert range_spec("t", (1,), "int:0,3") == InputSpec((1,), (0.0,), (3.0,), integer=True)
    assert range_spec("t", (1,), "int").protect_range() is None
    assert range_spec("t", (1,), "int: 2, 9").protect_range() == (2, 9)
    assert range_spec("img", (3, 8, 8), "", IMAGE_BOX) == InputSpec((3, 8, 8), (0.0,) * 3,
                                                                   (1.0,) * 3)


@pytest.mark.parametrize("text, match", [
    ("", "needs a range in input_ranges"),
    ("0,1,2", "give 'LOW,HIGH'"),
    ("-1:1", "gives 1 LOW:HIGH pairs; give one per channel \\(2"),
    ("1,0", "LOW >= HIGH"),
    ("0,inf", "not finite"),
    ("a,1", "'a' in 'a,1' is not a number"),
    ("int:0.5,3", "is not an integer"),
    ("int:3,0", "LOW > HIGH"),
])
def test_bad_range_text_says_what_to_write(text, match):
    with pytest.raises(ModelLoadError, match=match):
        range_spec("state", (2,), text)


def test_a_users_policy_of_three_inputs_is_bound_by_name_in_forward_order():
    # topics in another order than forward(image, state, task): input_names maps them
    loaded = load(ModelRequest("user_policy:make_policy", default_box=IMAGE_BOX,
                               inputs=_requests(("state", "task", "image"))))
    assert loaded.multi and loaded.source == "import" and loaded.task == "control"
    assert loaded.input_names == ("image", "state", "task")
    assert [s.shape for s in loaded.inputs] == [(3, 32, 32), (7,), (1,)]
    assert loaded.inputs[2].integer and not loaded.inputs[1].integer
    assert loaded.output_shape == (4, 7) and loaded.num_outputs == 28
    image, state, task = loaded.example_input()
    assert task.dtype == torch.int64 and int(task) == 0 and state.dtype == torch.float32
    assert loaded.input_box()[2] == (0, 3)
    assert torch.equal(loaded.input_box()[1].low, torch.tensor(user_policy.LOW))
    with torch.no_grad():
        assert loaded.module(image, state, task).shape == (1, 4, 7)


def test_without_names_the_topics_feed_the_forward_in_order():
    plain = [InputRequest("", r.shape, r.range, r.image) for r in _requests()]
    loaded = load(ModelRequest("user_policy:make_policy", default_box=IMAGE_BOX,
                               inputs=tuple(plain)))
    assert loaded.input_names == ("image", "state", "task")


def test_bind_refuses_unknown_repeated_and_missing_names():
    module = user_policy.make_policy()
    assert bind(module, ["task", "image", "state"], 3, "p") == ("task", "image", "state")
    with pytest.raises(ModelLoadError, match=r"\['joints'\] name no parameter of p.forward "
                       r"\(image, state, task\)"):
        bind(module, ["image", "joints", "task"], 3, "p")
    with pytest.raises(ModelLoadError, match="gives \\['image'\\] to more than one topic"):
        bind(module, ["image", "image", "task"], 3, "p")
    with pytest.raises(ModelLoadError, match="2 input topics, but p.forward takes 3 inputs"):
        bind(module, ["", ""], 2, "p")
    with pytest.raises(ModelLoadError, match="name the forward parameter of every topic"):
        bind(module, ["image", "", "task"], 3, "p")


@pytest.mark.parametrize("change, match", [
    ({"state": InputRequest("state", (), JOINT_RANGE)}, "needs its shape in input_shapes"),
    ({"state": InputRequest("state", (7,), "")}, "input 'state' needs a range"),
    ({"state": InputRequest("state", (6,), "-1,1")}, "fails on inputs of shapes .*check "
     "input_shapes"),
    ({"task": InputRequest("task", (1,), "0,3")}, "fails on inputs of shapes"),
])
def test_a_bad_input_description_is_one_clear_error(change, match):
    reqs = tuple(change.get(r.name, r) for r in _requests())
    with pytest.raises(ModelLoadError, match=match):
        load(ModelRequest("user_policy:make_policy", default_box=IMAGE_BOX, inputs=reqs))


def test_one_input_shape_for_a_policy_of_several_inputs_points_to_input_topics():
    with pytest.raises(ModelLoadError, match="forward takes 3 inputs \\(image, state, task\\): "
                       "serve it on input_topics"):
        load(ModelRequest("user_policy:make_policy", input_shape=(7,), input_low=(-1.0,),
                          input_high=(1.0,)))
    with pytest.raises(ModelLoadError, match="zoo policy 'visuomotor_tiny' declares its inputs"):
        load(ModelRequest("visuomotor_tiny", inputs=_requests()))
    assert not load(ModelRequest("digits_cnn", inputs=_requests())).multi  # check_fit refuses


def test_integer_inputs_are_exact_and_checked_against_their_valid_values():
    spec = InputSpec((2,), (0.0,), (3.0,), integer=True)
    x = int_array_to_input([1, 3], spec, "Int32MultiArray")
    assert x.dtype == torch.int64 and torch.equal(check_in_box(x, spec), torch.tensor([[1, 3]]))
    with pytest.raises(InputError, match="holds 4, outside its valid values \\[0, 3\\]"):
        check_in_box(int_array_to_input([4, 0], spec, "m"), spec)
    with pytest.raises(InputError, match="has 3 values, the model takes 2"):
        int_array_to_input([1, 2, 3], spec, "Int32MultiArray")
    with pytest.raises(InputError, match="got float values"):
        check_in_box(torch.ones(1, 2), spec)
    with pytest.raises(ValueError, match="no float box"):
        spec.box()


def _sets(n: int):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(n, 3, 32, 32, generator=g)
    low, high = torch.tensor(user_policy.LOW), torch.tensor(user_policy.HIGH)
    state = low + (high - low) * torch.rand(n, 7, generator=g)
    task = torch.randint(0, 4, (n, 1), generator=g)
    return image, state, task


def test_calibration_files_hold_one_batch_per_input(tmp_path):
    loaded = load(ModelRequest("user_policy:make_policy", default_box=IMAGE_BOX,
                               inputs=_requests()))
    names, specs = loaded.input_names, loaded.inputs
    image, state, task = _sets(6)
    state[1, 3] = 5.0  # outside the joint limit: this whole set is dropped
    task[4, 0] = 9  # an invalid task id: dropped too
    torch.save((image, state, task), tmp_path / "t.pt")
    torch.save({"task": task, "image": image, "state": state}, tmp_path / "d.pt")
    np.savez(tmp_path / "n.npz", image=image.numpy(), state=state.numpy(), task=task.numpy())
    keep = [0, 2, 3, 5]
    for name in ("t.pt", "d.pt", "n.npz"):
        warnings: list[str] = []
        got = sets_from_file(str(tmp_path / name), names, specs, 100, warnings.append)
        assert torch.equal(got[0], image[keep]) and torch.equal(got[1], state[keep])
        assert torch.equal(got[2], task[keep]) and got[2].dtype == torch.int64
        assert "dropped 2 of 6 calibration sets" in warnings[0]
    assert len(sets_from_file(str(tmp_path / "t.pt"), names, specs, 3)[0]) == 2  # 1 of 3 bad


def test_bad_calibration_files_of_several_inputs_say_what_to_fix(tmp_path):
    loaded = load(ModelRequest("user_policy:make_policy", default_box=IMAGE_BOX,
                               inputs=_requests()))
    names, specs = loaded.input_names, loaded.inputs
    image, state, task = _sets(4)
    cases = {
        "missing.pt": ({"image": image, "state": state}, "missing \\['task'\\]"),
        "two.pt": ((image, state), "one batch per input \\(image, state, task\\)"),
        "shape.pt": ((image, state[:, :6], task), "input 'state' has shape \\(4, 6\\)"),
        "count.pt": ((image, state[:3], task), "different sample counts \\(4, 3, 4\\)"),
        "float.pt": ((image, state, task.float()), "'task' is an integer input"),
    }
    for name, (data, match) in cases.items():
        torch.save(data, tmp_path / name)
        with pytest.raises(CalibrationError, match=match):
            sets_from_file(str(tmp_path / name), names, specs, 10)


def test_a_zoo_policys_integer_input_is_exact_in_the_node():
    loaded = load(ModelRequest("decision_transformer"))
    timesteps = loaded.inputs[loaded.input_names.index("timesteps")]
    assert timesteps.integer and timesteps.protect_range() == (0, 999)
    assert loaded.example_input()[3].dtype == torch.int64
    assert loaded.calibration[3].dtype == torch.int64


@pytest.mark.ros
def test_calibration_bags_of_several_topics_are_matched_like_live_ones(tmp_path):
    pytest.importorskip("rclpy")
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Int32MultiArray

    from save_ros.ros.bags import BagWriter
    from save_ros.ros.calibration import bag_topics, sets_from_bag

    with BagWriter(tmp_path / "bag") as bag:
        for i, t in enumerate((1.0, 2.0, 3.0, 4.0)):
            joints = JointState(name=["a", "b"], position=[0.1 * i, -0.1 * i])
            joints.header.stamp.sec = int(t)
            bag.write("/joints", joints, round(t * 1e9))
            if t != 3.0:  # no task at 3 s: that joint state stays unmatched
                bag.write("/task", Int32MultiArray(data=[i]), round((t + 0.01) * 1e9))
        bag.write("/other_joints", JointState(), round(9e9))
    path = str(tmp_path / "bag")
    types = ("sensor_msgs/msg/JointState", "std_msgs/msg/Int32MultiArray")
    assert bag_topics(path, types, ("/ns/j", "/task"), ("/joints", "")) == ("/joints", "/task")
    with pytest.raises(CalibrationError, match="has no topic /ns/j and 2 topics of type "
                       "sensor_msgs/msg/JointState; set calibration.topics"):
        bag_topics(path, types, ("/ns/j", "/ns/t"), ())
    with pytest.raises(CalibrationError, match="no topic '/nope' of type"):
        bag_topics(path, types, ("/ns/j", "/task"), ("/nope", ""))
    int_spec = InputSpec((1,), (0.0,), (3.0,), integer=True)
    decoders = (lambda m: torch.tensor([list(m.position)], dtype=torch.float32),
                lambda m: check_in_box(int_array_to_input(m.data, int_spec, "m"), int_spec))
    joints, tasks = sets_from_bag(path, ("/joints", "/task"), decoders, ("state", "task"),
                                  slop_ns=50_000_000, queue_size=10, limit=100)
    assert tasks.tolist() == [[0], [1], [3]] and joints[:, 0].tolist() == pytest.approx(
        [0.0, 0.1, 0.3])
    with pytest.raises(CalibrationError, match="no matched set within sync.slop"):
        sets_from_bag(path, ("/joints", "/task"), decoders, ("state", "task"), slop_ns=1,
                      queue_size=10, limit=100)
