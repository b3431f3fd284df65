"""The bundled reference models: registry, committed weights, data splits, fx tracing, bars."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from save_ros import models
from save_ros.core import bits
from save_ros.models import cartpole, digits_data
from save_ros.models import train as train_mod

DIGITS = ["digits_cnn", "digits_resnet", "digits_vit"]
# the bars of the brief, checked against the committed weights on the held-out test split
ACCURACY_BAR = {"digits_cnn": 0.97, "digits_resnet": 0.97, "digits_vit": 0.95}


@pytest.fixture(scope="module")
def loaded() -> dict[str, torch.nn.Module]:
    return {name: models.load(name) for name in models.available()}


def test_registry_lists_the_four_models_default_first() -> None:
    assert models.DEFAULT_MODEL == "digits_cnn"
    assert models.available() == ["digits_cnn", "digits_resnet", "digits_vit", "cartpole_policy"]
    for name in models.available():
        spec = models.get_spec(name)
        assert spec.name == name
        assert spec.weights_path.is_file() and spec.metrics_path.is_file()
        assert len(spec.input_low) == len(spec.input_high) == spec.input_shape[0]
        assert all(lo < hi for lo, hi in zip(spec.input_low, spec.input_high, strict=True))
    assert models.get_spec("digits_vit").task == "classification"
    assert models.get_spec("cartpole_policy").task == "control"


def test_unknown_model_names_the_bundled_ones() -> None:
    for call in (models.get_spec, models.load, lambda n: models.dataset(n, "test")):
        with pytest.raises(models.UnknownModelError, match="digits_cnn.*cartpole_policy"):
            call("lenet")
    with pytest.raises(models.UnknownModelError, match="unknown model 'lenet'"):
        models.evaluate("lenet", torch.nn.Identity())


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(models.UnknownSplitError, match="train, calib, test"):
        models.dataset("digits_cnn", "validation")


def test_missing_weights_error_names_the_command(monkeypatch, tmp_path) -> None:
    spec = models.get_spec("digits_resnet")
    missing = dataclasses.replace(spec, weights_path=tmp_path / "digits_resnet.pt")
    monkeypatch.setitem(models._SPECS, "digits_resnet", missing)
    with pytest.raises(models.MissingWeightsError,
                       match="save-ros maintainer train --model digits_resnet"):
        models.load("digits_resnet")
    assert issubclass(models.MissingWeightsError, FileNotFoundError)


@pytest.mark.parametrize("name", models.available())
def test_model_is_small_fp32_eval_and_cpu(loaded, name: str) -> None:
    model = loaded[name]
    assert not model.training and all(not m.training for m in model.modules())
    params = list(model.parameters()) + list(model.buffers())
    assert all(p.device.type == "cpu" for p in params)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) <= 200_000
    spec = models.get_spec(name)
    out = model(torch.zeros((2, *spec.input_shape)))
    assert out.shape == (2, spec.num_outputs) and out.dtype == torch.float32


@pytest.mark.parametrize("name", models.available())
def test_fx_trace_gives_bit_identical_outputs(loaded, name: str) -> None:
    model = loaded[name]
    traced = torch.fx.symbolic_trace(model)
    x, _ = models.dataset(name, "test")
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
        assert torch.equal(traced(x[:1]), model(x[:1]))  # batch 1, as a node runs it
    ops = {n.op for n in traced.graph.nodes}
    assert "call_module" in ops  # layers are visible as modules, not hidden in one opaque call


def test_digits_split_is_fixed_disjoint_and_stratified() -> None:
    idx = digits_data._split_indices()
    sizes = {k: len(v) for k, v in idx.items()}
    assert sizes == {"train": 1077, "calib": 180, "test": 540}
    all_idx = np.concatenate(list(idx.values()))
    assert len(np.unique(all_idx)) == len(all_idx) == 1797
    for split in ("train", "calib", "test"):
        x, y = models.dataset("digits_cnn", split)
        assert x.shape == (sizes[split], 1, 8, 8) and x.dtype == torch.float32
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        counts = torch.bincount(y, minlength=10).float() / len(y)
        assert float(counts.min()) > 0.08 and float(counts.max()) < 0.12  # stratified: ~10 %
    # all three digits models share the split
    for name in DIGITS[1:]:
        assert torch.equal(models.dataset(name, "test")[1], models.dataset("digits_cnn", "test")[1])


@pytest.mark.parametrize("name", DIGITS)
def test_digits_models_meet_their_bar_and_match_their_metrics(loaded, name: str) -> None:
    acc = models.evaluate(name, loaded[name], split="test")
    assert acc >= ACCURACY_BAR[name]
    recorded = json.loads(models.get_spec(name).metrics_path.read_text())
    assert acc == pytest.approx(recorded["test_accuracy"], abs=1e-12)


def test_evaluate_sees_a_faulty_model(loaded) -> None:
    faulty = models.load("digits_cnn")
    w = faulty.fc2.weight.data
    bits.flip_(w, torch.arange(0, w.numel(), 7), 30)  # exponent MSB: small weights become huge
    assert models.evaluate("digits_cnn", faulty) < 0.5
    assert models.evaluate("digits_cnn", loaded["digits_cnn"]) >= 0.97  # the committed copy


class Expert(torch.nn.Module):
    """The analytic expert as a logits model, so it runs through the same episode code."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        right = torch.from_numpy(cartpole.expert_action(x.numpy())).float()
        return torch.stack([1.0 - right, right], dim=1)


def test_expert_balances_the_pole() -> None:
    assert cartpole.run_episodes(Expert(), 10) == [cartpole.MAX_STEPS] * 10


def test_policy_balances_20_seeded_episodes(loaded) -> None:
    # >= 19 of 20 (seeds 10_000..10_019) reach 500 steps without termination
    assert models.evaluate("cartpole_policy", loaded["cartpole_policy"], episodes=20) >= 0.95


def test_evaluate_runs_the_given_faulty_policy() -> None:
    faulty = models.load("cartpole_policy")
    bits.flip_(faulty.fc3.bias.data, 1, 30)  # the "right" logit dominates: always push right
    assert models.evaluate("cartpole_policy", faulty, episodes=5) == 0.0


def test_policy_dataset_is_held_out_and_agrees_with_the_expert(loaded) -> None:
    x, y = models.dataset("cartpole_policy", "test")
    assert x.shape[1] == 4 and x.dtype == torch.float32 and len(x) == len(y) > 5_000
    assert torch.equal(y, torch.from_numpy(cartpole.expert_action(x.numpy())))
    with torch.no_grad():
        agreement = float((loaded["cartpole_policy"](x).argmax(1) == y).float().mean())
    assert agreement >= 0.99
    assert cartpole.TEST_SEED0 >= cartpole.TRAIN_SEED0 + cartpole.SPLIT_EPISODES["train"]


def test_policy_input_box_covers_held_out_states() -> None:
    spec = models.get_spec("cartpole_policy")
    low, high = spec.input_range()
    assert spec.input_high[0] == 2.4 and spec.input_high[2] == pytest.approx(12 * np.pi / 180)
    for split in ("calib", "test"):
        x, _ = models.dataset("cartpole_policy", split)
        assert bool(((x >= low) & (x <= high)).all())


def test_train_rejects_an_unknown_model(capsys) -> None:
    from save_ros.cli import main

    assert main(["maintainer", "train", "--model", "lenet"]) == 2
    assert "bundled models are" in capsys.readouterr().err


@pytest.mark.slow
def test_expert_balances_100_episodes() -> None:
    assert models.evaluate("cartpole_policy", Expert(), episodes=100) == 1.0


@pytest.mark.slow
def test_policy_succeeds_in_at_least_95_of_100_episodes(loaded) -> None:
    assert models.evaluate("cartpole_policy", loaded["cartpole_policy"], episodes=100) >= 0.95


@pytest.mark.slow
def test_retraining_digits_cnn_reproduces_the_committed_weights(tmp_path) -> None:
    torch.set_num_threads(1)  # the committed weights were trained single-threaded
    metrics = train_mod.train_model("digits_cnn", seed=0, out_dir=tmp_path)
    fresh = models.load("digits_cnn", tmp_path / "digits_cnn.pt")
    committed = models.load("digits_cnn")
    for (k, a), (_, b) in zip(
        fresh.state_dict().items(), committed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k
    assert metrics["test_accuracy"] >= 0.97
