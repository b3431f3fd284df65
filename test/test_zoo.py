"""The zoo: torchvision's architectures without torchvision, and their input-dependent variant."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import fx

from save_ros import models
from save_ros.models import zoo

# Skip only where torchvision is not installed; an installed torchvision that fails to import
# (e.g. a CUDA build against the CPU torch: "operator torchvision::nms does not exist") is an
# error of the environment the comparison must report, not a reason to pass silently.
if importlib.util.find_spec("torchvision") is not None:
    import torchvision

    TV_REASON = ""
else:
    torchvision = None
    TV_REASON = "torchvision is not installed (pip install torchvision to compare with it)"

# Keys and shapes as torchvision names them (checked against torchvision by the test below).
TORCHVISION_KEYS = {
    "resnet18": {"layer2.0.downsample.0.weight": (128, 64, 1, 1),
                 "layer4.1.bn2.running_var": (512,), "fc.weight": (1000, 512)},
    "resnet50": {"layer1.0.downsample.1.num_batches_tracked": (),
                 "layer4.2.conv3.weight": (2048, 512, 1, 1), "fc.bias": (1000,)},
    "mobilenet_v2": {"features.0.0.weight": (32, 3, 3, 3),
                     "features.1.conv.0.0.weight": (32, 1, 3, 3),
                     "features.17.conv.2.weight": (320, 960, 1, 1),
                     "features.18.1.running_mean": (1280,), "classifier.1.weight": (1000, 1280)},
    "vit_b_16": {"class_token": (1, 1, 768), "conv_proj.weight": (768, 3, 16, 16),
                 "encoder.pos_embedding": (1, 197, 768),
                 "encoder.layers.encoder_layer_0.self_attention.in_proj_weight": (2304, 768),
                 "encoder.layers.encoder_layer_11.mlp.3.weight": (768, 3072),
                 "encoder.ln.bias": (768,), "heads.head.weight": (1000, 768)},
}


@pytest.fixture(scope="module")
def plain() -> dict[str, torch.nn.Module]:
    """Every architecture with torchvision's init (no calibration), seed 0."""
    return {name: zoo.build(name, input_dependent=False) for name in zoo.available()}


def test_parameter_counts_equal_torchvisions(plain):
    for name, model in plain.items():
        assert sum(p.numel() for p in model.parameters()) == zoo.PARAMETERS[name], name


def test_state_dict_keys_are_torchvisions(plain):
    for name, keys in TORCHVISION_KEYS.items():
        sd = plain[name].state_dict()
        for key, shape in keys.items():
            assert tuple(sd[key].shape) == shape, (name, key)


def test_output_shapes_at_224_and_any_size():
    x = torch.rand(2, 3, 224, 224)
    for name in ("resnet50", "mobilenet_v2"):
        with torch.no_grad():
            assert zoo.build(name, input_dependent=False)(x).shape == (2, 1000)
    small = zoo.build("resnet18", num_classes=10, input_dependent=False)
    with torch.no_grad():
        assert small(torch.rand(3, 3, 64, 64)).shape == (3, 10)
        assert small(torch.rand(1, 3, 97, 131)).shape == (1, 10)


def test_vit_position_embedding_follows_image_size():
    vit = zoo.build("vit_b_16", num_classes=5, image_size=64, input_dependent=False)
    assert vit.encoder.pos_embedding.shape == (1, 17, 768)  # (64 / 16)^2 + class token
    with torch.no_grad():
        assert vit(torch.rand(2, 3, 64, 64)).shape == (2, 5)
    with pytest.raises(Exception, match="Wrong image height"):
        vit(torch.rand(1, 3, 80, 64))


def test_they_trace_with_fx_and_keep_torchvisions_functional_ops(plain):
    ops = {}
    for name, model in plain.items():
        gm = fx.symbolic_trace(model)
        ops[name] = {str(getattr(n.target, "__name__", n.target)) for n in gm.graph.nodes}
        x = torch.rand(1, 3, 224, 224)
        if name in ("resnet18", "mobilenet_v2"):  # the other two cost a second each here
            with torch.no_grad():
                assert torch.equal(gm(x), model(x)), name
    # `out += identity` traces as operator.add (a Proxy has no __iadd__), as torchvision's does
    assert {"add", "flatten"} <= ops["resnet18"]
    assert {"add", "adaptive_avg_pool2d", "flatten"} <= ops["mobilenet_v2"]
    assert {"cat", "expand", "reshape", "permute", "getitem", "add",
            "encoder.layers.encoder_layer_0.self_attention"} <= ops["vit_b_16"]


def test_torchvision_init_is_kept(plain):
    vit = plain["vit_b_16"]
    assert not vit.heads.head.weight.any() and not vit.heads.head.bias.any()  # zero head
    assert not vit.class_token.any()
    r = plain["resnet18"]
    assert torch.equal(r.bn1.running_mean, torch.zeros(64))
    assert bool((r.bn1.weight == 1).all())
    head = plain["mobilenet_v2"].classifier[1].weight.detach()
    assert float(head.std()) == pytest.approx(0.01, rel=0.05)


def test_same_seed_same_weights_other_seed_other_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = zoo.build("resnet18", num_classes=10, input_dependent=False, seed=7)
    assert torch.equal(torch.rand(3), before)  # build did not consume the global generator
    b = zoo.build("resnet18", num_classes=10, input_dependent=False, seed=7)
    c = zoo.build("resnet18", num_classes=10, input_dependent=False, seed=8)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    with pytest.raises(TypeError, match="seed"):
        zoo.build("resnet18", seed=1.5)
    with pytest.raises(zoo.UnknownZooModelError, match="resnet18"):
        zoo.build("resnet19")


def test_images_are_seeded_in_range_and_prefix_stable():
    x = zoo.images(6, 48, seed=3)
    assert x.shape == (6, 3, 48, 48) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(zoo.images(6, 48, seed=3), x)
    assert torch.equal(zoo.images(2, 48, seed=3), x[:2])
    assert not torch.equal(zoo.images(6, 48, seed=4), x)
    assert float(x.std()) > 0.05  # not flat
    with pytest.raises(TypeError):
        zoo.images(2, 48, seed=0.5)


def test_input_dependent_model_decides_by_its_input():
    """At 64 px (fast): the plain init answers ~one class; the calibrated model many."""
    x = zoo.images(96, 64, seed=300)
    plain_r = zoo.decision_report(zoo.build("resnet18", image_size=64, input_dependent=False), x)
    model = zoo.build("resnet18", image_size=64)
    rep = zoo.decision_report(model, x)
    assert plain_r["mode_share"] > 0.5
    assert rep["distinct"] >= 30 and rep["mode_share"] < 0.25 and rep["finite"]
    assert not model.training
    bn = model.bn1
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 2  # 32 images in 2 batches
    assert not torch.equal(bn.running_mean, torch.zeros(64))
    again = zoo.build("resnet18", image_size=64)  # from the cache: equal, not the same object
    assert again is not model
    for (k, v), w in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


def test_vit_head_is_reinitialised_from_the_seed():
    vit = zoo.build("vit_b_16", num_classes=20, image_size=32, seed=1)
    assert vit.heads.head.weight.any()
    rep = zoo.decision_report(vit, zoo.images(40, 32, seed=300))
    assert rep["distinct"] >= 8 and rep["mode_share"] < 0.5


def test_registry_resolves_zoo_names_without_listing_them_by_default():
    assert "resnet50" not in models.available()
    assert models.available(include_zoo=True)[-4:] == zoo.available()
    spec = models.get_spec("vit_b_16")
    assert spec.is_zoo and spec.weights_path is None and spec.input_shape == (3, 224, 224)
    low, high = spec.input_range()
    assert low.shape == (3, 224, 224) and float(high.max()) == 1.0
    with pytest.raises(models.UnknownSplitError, match="calib"):
        models.dataset("resnet18", "train")


@pytest.mark.slow
def test_registry_loads_a_zoo_model_with_self_labelled_data():
    x, y = models.dataset("resnet18", "calib")
    assert x.shape == (64, 3, 224, 224) and y.shape == (64,)
    model = models.load("resnet18")
    assert models.evaluate("resnet18", model, split="calib") == 1.0
    assert len(torch.unique(y)) >= 15


@pytest.mark.cuda
@pytest.mark.skipif(torchvision is None, reason=TV_REASON)
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", "vit_b_16"])
def test_torchvision_state_dict_loads_strictly_and_outputs_agree(name):
    """Runs where torchvision imports (the GPU machine): names, shapes, forward, init RNG."""
    torch.manual_seed(0)
    tv = getattr(torchvision.models, name)(weights=None).eval()
    ours = zoo.build(name, input_dependent=False, seed=0)
    assert list(tv.state_dict()) == list(ours.state_dict())
    # our constructor draws the same random numbers in the same order as torchvision's
    for (k, a), b in zip(tv.state_dict().items(), ours.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    zoo.input_dependent(tv, name, seed=0, batches=zoo.calibration_batches(224, 0, n=8))
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = zoo.images(4, 224, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), atol=1e-5, rtol=1e-5)
    assert len(list(fx.symbolic_trace(tv).graph.nodes)) == len(
        list(fx.symbolic_trace(ours).graph.nodes))
