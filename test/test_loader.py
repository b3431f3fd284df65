"""save_ros.models.loader: one loader, one import-path rule, one error class for every caller."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch

from save_ros import models
from save_ros.errors import UserError
from save_ros.eval import model_cli
from save_ros.failover import ModelSource
from save_ros.models import loader, zoo
from save_ros.models.loader import ModelLoadError, Source
from save_ros.ros import model_source

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))  # foreign_nets.py
    monkeypatch.syspath_prepend(str(HERE / "byom"))  # robot_nets.py


@pytest.mark.parametrize("text", ["pkg.mod:make", "nets:Net", "pkg.mod:Factory.create",
                                  "_private.m2:f_1", "torch.jit:load"])
def test_import_paths(text):
    assert loader.is_import_path(text)


@pytest.mark.parametrize("text", ["digits_cnn", "a/b.py:f", "C:\\models\\m.pt2", "my-pkg:make",
                                  "pkg.mod:", ":make", "pkg:mod:make", "pkg..mod:f",
                                  "net.pt2", "pkg.mod:make()", "2pkg:f", ""])
def test_not_import_paths(text):
    assert not loader.is_import_path(text)


def test_the_node_the_campaigns_and_the_workers_share_the_rule_and_the_error():
    assert model_source.is_import_path is loader.is_import_path
    assert model_cli.is_import_path is loader.is_import_path
    assert model_source.ModelLoadError is ModelLoadError
    assert model_cli.ModelLoadError is ModelLoadError
    assert issubclass(ModelLoadError, UserError) and issubclass(ModelLoadError, models.ModelError)


def _campaign_args(model: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    model_cli.add_arguments(parser)
    return parser.parse_args(["--model", model, "--input-shape", "3,8,8", "--input-range",
                              "0,1"])


@pytest.mark.parametrize(("model", "needle"), [
    ("no_such_pkg.nets:make", "cannot import 'no_such_pkg.nets'"),
    ("foreign_nets:nothing", "module 'foreign_nets' has no attribute 'nothing'"),
    ("foreign_nets:not_a_model", "not_a_model() returned int, not a torch.nn.Module"),
    ("foreign_nets:broken", "calling broken() raised RuntimeError: no GPU here"),
    ("foreign_nets:LAYERS", "is a int, not a callable"),
])
def test_one_error_from_the_node_the_campaigns_and_the_workers(model, needle):
    """The same bad import path fails with the same class and text wherever it is loaded."""
    needle = re.escape(needle)
    with pytest.raises(ModelLoadError, match=needle):
        model_source.load(model_source.ModelRequest(model, input_shape=(3, 8, 8),
                                                    input_low=(0.0,), input_high=(1.0,)))
    with pytest.raises(ModelLoadError, match=needle):
        model_cli.setup_from_args(_campaign_args(model), batch=4)
    with pytest.raises(ModelLoadError, match=needle):
        ModelSource(model).load()
    with pytest.raises(ModelLoadError, match=needle):
        loader.load(model)


@pytest.mark.parametrize("model", ["my-pkg:make", "nets/net.py:make"])
def test_a_colon_that_is_no_import_path_says_so_everywhere(model):
    with pytest.raises(ModelLoadError, match="is not an import path"):
        loader.load(model)
    with pytest.raises(ModelLoadError, match="expected an import path"):
        model_cli.setup_from_args(_campaign_args(model), batch=4)
    with pytest.raises(ModelLoadError, match="expected an import path"):
        ModelSource(model).load()


def test_a_bundled_name_loads_its_committed_weights():
    loaded = loader.load("digits_cnn")
    assert loaded.source is Source.BUNDLED and not loaded.module.training
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(loaded.module(x), models.load("digits_cnn")(x))


def test_a_zoo_policy_loads_with_a_state_dict(tmp_path):
    trained = zoo.build_policy("decision_transformer", seed=5)
    torch.save(trained.state_dict(), tmp_path / "dt.pt")
    loaded = loader.load("decision_transformer", tmp_path / "dt.pt")
    assert loaded.source is Source.ZOO_POLICY
    inputs = zoo.example_inputs("decision_transformer")
    with torch.no_grad():
        assert torch.equal(loaded.module(*inputs), trained(*inputs))
        assert not torch.equal(loader.load("decision_transformer").module(*inputs),
                               trained(*inputs))


def test_an_import_path_with_args_and_a_dotted_factory():
    model = loader.load_factory("save_ros.models.zoo:policies.build_policy",
                                ("rdt_policy_tiny",))
    assert type(model).__name__ == "RDTPolicy"
    assert type(loader.load_factory("torch.nn:Linear", (4, 2))).__name__ == "Linear"


def test_a_state_dict_that_does_not_fit_lists_the_keys(tmp_path):
    torch.save(models.load("cartpole_policy").state_dict(), tmp_path / "w.pt")
    with pytest.raises(ModelLoadError, match="does not fit architecture 'digits_cnn': missing"):
        loader.load("digits_cnn", tmp_path / "w.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match="neither TorchScript nor a state dict"):
        loader.load("digits_cnn", tmp_path / "junk.pt")


def test_export_and_torchscript_files(tmp_path):
    net = models.load("cartpole_policy")
    x = torch.rand(3, 4)
    torch.export.save(torch.export.export(net, (torch.zeros(1, 4),)), tmp_path / "p.pt2")
    exported = loader.load(str(tmp_path / "p.pt2"))
    assert exported.source is Source.EXPORT and exported.input_shapes == ((4,),)
    assert torch.allclose(exported.module(x[:1]), net(x[:1]))  # exported at batch 1
    exported.module.eval()  # a no-op, as protect() needs
    torch.jit.save(torch.jit.script(net), tmp_path / "p.ts")
    scripted = loader.load("cartpole_policy", tmp_path / "p.ts")
    assert scripted.source is Source.TORCHSCRIPT and "torch.export" in scripted.why_unprotectable
    assert torch.equal(scripted.module(x), net(x))
    # a failover worker loads the same file by name, as the node's isolation=process does
    worker_copy = ModelSource.named("cartpole_policy", str(tmp_path / "p.ts")).load()
    assert torch.equal(worker_copy(x), net(x))


def test_unknown_names_and_missing_files_say_what_to_give(tmp_path):
    with pytest.raises(ModelLoadError, match="unknown model 'resnet9000'; give a bundled model"
                       r".*rdt_policy.*import path"):
        loader.load("resnet9000")
    with pytest.raises(ModelLoadError, match="does not exist"):
        loader.load("digits_cnn", "/nonexistent/w.pt")
    with pytest.raises(ModelLoadError, match="is a directory"):
        loader.load("digits_cnn", tmp_path)
    with pytest.raises(ModelLoadError, match="does not exist"):
        loader.load("/nonexistent/net.pt2")


def test_the_node_loads_a_zoo_policy_with_a_spec_per_input():
    loaded = model_source.load(model_source.ModelRequest("visuomotor_tiny"))
    assert loaded.multi and loaded.input_names == ("image", "joint_state")
    assert [s.shape for s in loaded.inputs] == [(3, 64, 64), (7,)]
    assert loaded.inputs[1].low == zoo.input_boxes("visuomotor_tiny")[1][0]
    assert loaded.output_shape == (4, 7) and loaded.num_outputs == 28
    assert loaded.task == "control"
    image, joints = loaded.example_input()
    assert image.shape == (1, 3, 64, 64) and joints.shape == (1, 7)
    assert [len(c) for c in loaded.calibration] == [8, 8]
    with pytest.raises(ModelLoadError, match="declares its inputs; leave input_shape"):
        model_source.load(model_source.ModelRequest("visuomotor_tiny", input_shape=(7,)))
