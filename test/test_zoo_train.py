"""Trained zoo models: the scene task, the recipe, trained weights on disk and in the bench.

Training at 224 px is GPU work (`scripts/device/train_zoo.sh`); here the same code runs on the
CPU at 32-64 px for a few steps, single-threaded and seeded, so every assertion is exact or
about learning, never about time.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from save_ros.cli import main as cli_main
from save_ros.eval.bench import scale, scale_inits
from save_ros.models import zoo
from save_ros.models.zoo import scenes as sc
from save_ros.models.zoo import weights as zw
from save_ros.models.zoo.train import (
    Recipe,
    TrainConfig,
    TrainZooError,
    learning_rate,
    train,
)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-exact repeats, and no fight over a shared VM's cores
    yield
    torch.set_num_threads(before)


# --- the scenes -----------------------------------------------------------------------------

def test_scenes_are_seeded_balanced_and_in_range():
    x, y = sc.scenes(40, 48, seed=3)
    assert x.shape == (40, 3, 48, 48) and x.dtype == torch.float32 and y.dtype == torch.long
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.bincount(y, minlength=10).tolist() == [4] * 10  # perm % classes: balanced
    x2, y2 = sc.scenes(40, 48, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = sc.scenes(40, 48, seed=4)
    assert (x - x3).abs().mean() > 0.05
    _, y4 = sc.scenes(30, 32, seed=3, classes=3)
    assert set(y4.tolist()) == {0, 1, 2}
    assert x.std(dim=(2, 3)).min() > 0.01  # no blank image


def test_the_class_is_the_shape_not_the_colour():
    x, y = sc.scenes(2000, 16, seed=5)
    mean_colour = x.mean(dim=(2, 3))
    per_class = torch.stack([mean_colour[y == k].mean(0) for k in range(10)])
    assert (per_class - mean_colour.mean(0)).abs().max() < 0.08  # colour says little


def test_training_seeds_never_meet_held_out_ones():
    assert sc.train_seed(0, 0) >= sc.HELD_OUT_SEEDS > max(sc.TEST_SEED, sc.CALIB_SEED)
    assert sc.train_seed(1, 0) > sc.train_seed(0, 999_999)
    with pytest.raises(sc.SceneError, match="step"):
        sc.train_seed(0, 1_000_000)


@pytest.mark.parametrize("kwargs, match", [
    ({"n": -1}, "n must be"), ({"size": 8}, "size must be"), ({"seed": 1.5}, "seed must be"),
    ({"classes": 11}, "classes must be 2..10"), ({"classes": 1}, "classes must be")])
def test_bad_scene_arguments_say_what_is_allowed(kwargs, match):
    args = {"n": 2, "size": 32, "seed": 0} | kwargs
    with pytest.raises(sc.SceneError, match=match):
        sc.scenes(**args)


# --- the recipe -----------------------------------------------------------------------------

def _small_cnn() -> nn.Module:
    torch.manual_seed(0)

    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]
    return nn.Sequential(*block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2),
                         *block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 1000))


def test_learning_rate_warms_up_then_decays_to_zero():
    r = Recipe(lr=1.0, warmup=0.1)
    assert learning_rate(r, 0.05) == pytest.approx(0.5)
    assert learning_rate(r, 0.1) == pytest.approx(1.0)
    assert learning_rate(r, 0.55) == pytest.approx(0.5)
    assert learning_rate(r, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_the_zoo_resnet18_trains_and_repeats_exactly(tmp_path):
    cfg = TrainConfig(model="resnet18", size=32, classes=4, steps=4, seed=1, test_images=16,
                      overrides={"batch": 8})
    lines: list[str] = []
    model, rec = train(cfg, progress=lines.append, every_s=0.0)
    assert rec["steps"] == 4 and rec["images_seen"] == 32 and rec["classes"] == 4
    assert rec["test"]["images"] == 16 and 0.0 <= rec["test"]["accuracy"] <= 1.0
    assert len(lines) == 4 and "img/s" in lines[0] and "ETA" in lines[0]
    # the 1,000-logit head is kept: cross-entropy first learns that logits 4..999 never win
    assert rec["log"][-1]["loss"] < rec["log"][0]["loss"]
    assert sum(p.numel() for p in model.parameters()) == zoo.PARAMETERS["resnet18"]
    _, again = train(cfg, progress=None, every_s=0.0)
    assert [e["loss"] for e in again["log"]] == [e["loss"] for e in rec["log"]]
    assert again["test"] == rec["test"]


def test_the_autocast_and_channels_last_path_runs_on_the_cpu():
    """bf16 autocast in channels_last, the layout and precision CUDA trains in (AMP)."""
    cfg = TrainConfig(model="mobilenet_v2", size=32, classes=3, steps=2, test_images=6,
                      amp="bf16", overrides={"batch": 4})
    model, rec = train(cfg, progress=None)
    assert rec["amp"] == "bfloat16" and rec["steps"] == 2
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.is_contiguous() for p in model.parameters())  # handed back in plain layout


@pytest.mark.slow
def test_a_small_network_learns_the_shapes_beyond_chance():
    """The loop learns the task: a 3-layer CNN, disc or bar (clean scenes, 32 px), 300 steps.

    About 15 s of CPU; it reached 69 % held-out (chance 50 %) when written. The real task (10
    shapes in clutter) needs the zoo's networks and a GPU (docs/results/zoo.md)."""
    cfg = TrainConfig(model="small_cnn", size=32, classes=2, clutter=0.0, steps=300,
                      test_images=400, recipe=Recipe(lr=3e-3, batch=32, weight_decay=0.0))
    _, rec = train(cfg, progress=None, every_s=0.0, model=_small_cnn())
    assert rec["test"]["accuracy"] > 0.6, rec["test"]
    assert rec["log"][-1]["loss"] < 0.2 * rec["log"][0]["loss"]


@pytest.mark.parametrize("cfg, match", [
    (TrainConfig(model="resnet99", steps=1), "unknown zoo model"),
    (TrainConfig(model="resnet18"), "give a budget"),
    (TrainConfig(model="resnet18", steps=0), "must be positive"),
    (TrainConfig(model="resnet18", steps=1, amp="int8"), "amp must be"),
    (TrainConfig(model="resnet18", steps=1, amp="fp16"), "needs CUDA"),
    (TrainConfig(model="vit_b_16", steps=1, size=40), "divisible by 16"),
    (TrainConfig(model="resnet18", steps=1, device="cuda:99"), "CUDA|cuda")])
def test_bad_configurations_say_what_to_change(cfg, match):
    if "cuda" in cfg.device and torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(TrainZooError, match=match):
        train(cfg, progress=None)


# --- trained weights ------------------------------------------------------------------------

def _trained_like(name: str = "mobilenet_v2", size: int = 32) -> nn.Module:
    """A zoo model whose weights are not the seeded init (as training leaves them)."""
    m = zoo.build(name, image_size=size, input_dependent=False)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.01)
    return m.eval()


def test_weights_round_trip_fp32_exact_fp16_close_and_shards_equal(tmp_path):
    m = _trained_like()
    x = sc.scenes(4, 32, seed=9)[0]
    with torch.no_grad():
        ref = m(x)
    zw.save_state(m, tmp_path / "f32", "mobilenet_v2")
    one = zoo.build("mobilenet_v2", image_size=32, weights=tmp_path / "f32")
    assert all(torch.equal(a, b) for a, b in zip(one.state_dict().values(),
                                                 m.state_dict().values(), strict=True))
    limit = 3 * 2**20  # fp16 MobileNetV2 is 7 MB; its largest tensor (the head) 2.6 MB
    paths = zw.save_state(m, tmp_path / "f16", "mobilenet_v2", torch.float16, limit)
    assert len(paths) == 3 and all(p.stat().st_size < limit + 2**16 for p in paths)
    half = zoo.build("mobilenet_v2", image_size=32, weights=tmp_path / "f16")
    assert all(v.dtype != torch.float16 for v in half.state_dict().values())
    with torch.no_grad():
        out = half(x)
    assert torch.equal(out.argmax(1), ref.argmax(1))
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    # a re-run with fewer shards leaves none of the old ones behind
    zw.save_state(m, tmp_path / "f16", "mobilenet_v2", torch.float16)
    assert zw.find(tmp_path / "f16", "mobilenet_v2") == [tmp_path / "f16" / "mobilenet_v2.pt"]


def test_weights_that_do_not_fit_are_a_clear_error(tmp_path):
    with pytest.raises(zw.WeightsError, match="no trained weights for resnet18"):
        zoo.build("resnet18", weights=tmp_path)
    with pytest.raises(zw.WeightsError, match="neither a file nor a folder"):
        zoo.build("resnet18", weights=tmp_path / "nowhere")
    zw.save_state(zoo.build("vit_b_16", image_size=32, input_dependent=False), tmp_path,
                  "vit_b_16")
    with pytest.raises(zw.WeightsError, match="for 32 px"):
        zoo.build("vit_b_16", image_size=48, weights=tmp_path)
    zw.save_state(_trained_like(), tmp_path, "resnet18")  # another architecture's weights
    with pytest.raises(zw.WeightsError, match="do not fit"):
        zoo.build("resnet18", weights=tmp_path)


# --- the command line and the bench ---------------------------------------------------------

def test_train_zoo_verb_writes_weights_and_record_that_build_loads(tmp_path, capsys):
    out = tmp_path / "trained"
    code = cli_main(["maintainer", "train-zoo", "--models", "mobilenet_v2", "--device", "cpu",
                     "--size", "32", "--steps", "2", "--batch", "4", "--classes", "3",
                     "--test-images", "6", "--shard-mib", "4", "--threads", "1", "--out", str(out)])
    assert code == 0
    assert "mobilenet_v2: held-out accuracy" in capsys.readouterr().out
    rec = json.loads((out / "mobilenet_v2.json").read_text())
    assert rec["steps"] == 2 and rec["weights"]["dtype"] == "fp16"
    assert 0.0 <= rec["test_saved_weights"]["accuracy"] <= 1.0
    assert rec["weights"]["files"] == ["mobilenet_v2.part0.pt", "mobilenet_v2.part1.pt"]
    m = zoo.build("mobilenet_v2", image_size=32, weights=out)
    assert m(sc.scenes(2, 32, seed=1)[0]).shape == (2, 1000)


@pytest.mark.parametrize("argv, match", [
    (["--seconds", "resnet99=5"], "unknown model 'resnet99'"),
    (["--models", "resnet18,alexnet"], "expected"), (["--steps", "0"], "expected")])
def test_train_zoo_verb_rejects_bad_options(tmp_path, capsys, argv, match):
    with pytest.raises(SystemExit) as exc:
        cli_main(["maintainer", "train-zoo", "--out", str(tmp_path), *argv])
    assert exc.value.code == 2 and match in capsys.readouterr().err


def test_bench_rows_put_trained_beside_random(tmp_path):
    for name in ("resnet18", "mobilenet_v2"):
        (tmp_path / f"{name}.pt").write_bytes(b"")  # rows() checks the files exist, not more
    assert scale_inits.rows(["resnet18"], None, None) == [("resnet18", "resnet18", None)]
    assert scale_inits.rows(["resnet18", "mobilenet_v2"], None, tmp_path) == [
        ("resnet18", "resnet18", None), ("resnet18@trained", "resnet18", tmp_path),
        ("mobilenet_v2", "mobilenet_v2", None),
        ("mobilenet_v2@trained", "mobilenet_v2", tmp_path)]
    with pytest.raises(scale_inits.InitError, match="needs --trained"):
        scale_inits.rows(["resnet18"], ("trained",), None)
    with pytest.raises(scale_inits.InitError, match="import path"):
        scale_inits.rows(["pkg.mod:make"], ("trained",), tmp_path)
    with pytest.raises(zw.WeightsError, match="no trained weights for vit_b_16"):
        scale_inits.rows(["resnet18", "vit_b_16"], None, tmp_path)  # before any row runs


def test_bench_scale_measures_a_trained_model(tmp_path):
    w = tmp_path / "w"
    cfg = TrainConfig(model="resnet18", size=32, classes=4, steps=2, test_images=8,
                      overrides={"batch": 4})
    model, rec = train(cfg, progress=None)
    zw.save_state(model, w, "resnet18", torch.float16)
    (w / "resnet18.json").write_text(json.dumps(rec))
    out = tmp_path / "scale.json"
    code = scale.main(["--models", "resnet18", "--device", "cpu", "--size", "32",
                       "--what", "analysis", "--calibration", "8", "--trained", str(w),
                       "--init", "trained", "--out", str(out)])
    assert code == 0
    res = json.loads(out.read_text())["models"]
    assert list(res) == ["resnet18@trained"]
    row = res["resnet18@trained"]
    assert row["init"] == "trained" and row["calibration_images"] == "scenes"
    assert row["train"]["steps"] == 2 and row["test_accuracy"] == rec["test"]["accuracy"]
    assert sum(row["analysis"]["bit_shares"].values()) == pytest.approx(1.0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_scenes_match_the_cpu_labels_and_amp_training_runs(tmp_path):
    x, y = sc.scenes(16, 64, seed=5, device="cuda")
    xc, yc = sc.scenes(16, 64, seed=5)
    assert x.is_cuda and torch.equal(y.cpu(), yc)  # the parameters are drawn on the CPU
    assert torch.equal(sc.scenes(16, 64, seed=5, device="cuda")[0], x)
    # same scenes up to the pixel noise (drawn on the device) and float rounding
    assert (x.cpu() - xc).abs().mean() < 0.1  # another scene differs by ~0.2
    for name in ("resnet18", "vit_b_16"):
        cfg = TrainConfig(model=name, device="cuda", size=64, classes=4, steps=3, test_images=8,
                          overrides={"batch": 8})
        model, rec = train(cfg, progress=None)
        assert rec["amp"] == "bfloat16" and rec["steps"] == 3
        assert all(math.isfinite(e["loss"]) for e in rec["log"])
        zw.save_state(model, tmp_path, name, torch.float16)
        back = zoo.build(name, image_size=64, weights=tmp_path).cuda()
        with torch.no_grad():
            assert torch.equal(back(x).argmax(1), model(x).argmax(1)) or \
                (back(x) - model(x)).abs().max() < 0.05
