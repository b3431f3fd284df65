"""save_ros.ros.model_source: bundled names, import paths, torch.export files, state dicts."""

import os
import sys

import pytest
import torch

from save_ros import models
from save_ros.ros.model_source import ModelLoadError, ModelRequest, is_import_path, load

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "byom"))
import robot_nets  # noqa: E402


def IMAGE_BOX(channels):  # noqa: N802 (a box like the node's image preprocessing gives)
    return (0.0,), (1.0,)


def test_import_path_factory_builds_the_users_model():
    loaded = load(ModelRequest("robot_nets:tiny_color_net", input_shape=(3, 16, 16),
                               default_box=IMAGE_BOX))
    assert loaded.source == "import" and loaded.num_outputs == 4
    assert loaded.input.low == (0.0,) * 3 and loaded.task == "classification"
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(loaded.module(x), robot_nets.tiny_color_net().eval()(x))


def test_import_path_with_a_state_dict(tmp_path):
    trained = robot_nets.ArmPolicy()
    with torch.no_grad():
        trained.net[0].weight.add_(1.0)
    path = tmp_path / "arm.pt"
    torch.save(trained.state_dict(), path)
    loaded = load(ModelRequest("robot_nets:ArmPolicy", model_file=str(path), task="control",
                               input_shape=(6,), input_low=(-3.14,), input_high=(3.14,)))
    x = torch.rand(1, 6)
    assert torch.equal(loaded.module(x), trained(x)) and loaded.num_outputs == 3


def test_a_state_dict_that_does_not_fit_lists_the_keys(tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save(models.load("cartpole_policy").state_dict(), path)
    with pytest.raises(ModelLoadError) as err:
        load(ModelRequest("digits_cnn", model_file=str(path)))
    text = str(err.value)
    assert "does not fit architecture 'digits_cnn'" in text and "missing [" in text
    assert "unexpected [" in text and "\n" not in text


def test_exported_program_is_loaded_with_its_input_shape(tmp_path):
    model = robot_nets.tiny_color_net().eval()
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 3, 16, 16),)), path)
    loaded = load(ModelRequest(str(path), default_box=IMAGE_BOX))
    assert loaded.source == "export" and loaded.input.shape == (3, 16, 16)
    x = torch.rand(1, 3, 16, 16)
    assert torch.allclose(loaded.module(x), model(x))
    loaded.module.eval()  # protect() calls it; an exported module would raise


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (ModelRequest("my_pkg.nets:MyNet", input_shape=(4,)), "cannot import 'my_pkg.nets'"),
        (ModelRequest("robot_nets:nothing_here", input_shape=(4,)),
         "has no attribute 'nothing_here'"),
        (ModelRequest("robot_nets:tiny_color_net", default_box=IMAGE_BOX), "set input_shape"),
        (ModelRequest("robot_nets:ArmPolicy", input_shape=(6,)), "no declared input box"),
        (ModelRequest("robot_nets:ArmPolicy", input_shape=(5,), input_low=(0.0,),
                      input_high=(1.0,)), "fails on an input of shape (1, 5)"),
        (ModelRequest("resnet9000"), "unknown model 'resnet9000'; give a bundled model"),
        # the parameter the user set is named (issue 19: this said model_file)
        (ModelRequest("/nonexistent/net.pt2"), "model '/nonexistent/net.pt2' does not exist"),
        (ModelRequest("digits_cnn", model_file="/nonexistent/net.pt2"),
         "model_file '/nonexistent/net.pt2' does not exist"),
    ],
)
def test_bad_model_requests_say_what_to_fix(request_, message):
    with pytest.raises(ModelLoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(request_)


def test_a_directory_as_model_file_is_named_a_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="is a directory"):
        load(ModelRequest("digits_cnn", model_file=str(tmp_path)))


def test_import_path_syntax():
    assert is_import_path("my_pkg.nets:make") and is_import_path("nets:Net")
    assert not is_import_path("digits_cnn") and not is_import_path("a/b.py:f")
