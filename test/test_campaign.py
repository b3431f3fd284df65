"""Campaigns: behaviour on models whose faulty outcome is known, determinism, the CLI."""

import json

import pytest
import torch
from torch import nn

from save_ros.core import bits
from save_ros.eval.campaign import CampaignConfig, CampaignError, EvalSetup, run_campaign
from save_ros.eval.methods import EccOracle, Method, UnknownMethodError, Unprotected, get_method
from save_ros.eval.metrics import Proportion, Spread, accurate_latency, compare, wilson_interval


def identity_setup(keep: list | None = None) -> EvalSetup:
    """Linear(2, 2) = identity on points whose label is their larger coordinate: accuracy 1.0."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 2, generator=gen)
    y = x.argmax(dim=1)

    def build() -> nn.Module:
        lin = nn.Linear(2, 2)
        with torch.no_grad():
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
        model = nn.Sequential(lin, nn.Flatten(), nn.Identity())
        if keep is not None:
            keep.append(model)
        return model

    return EvalSetup(name="identity", build=build, x=x, y=y)


def numbers(result: dict) -> list:
    """Everything measured except timings."""
    return [{k: v for k, v in p.items() if not k.startswith(("latency", "accurate_latency"))}
            for p in result["points"]]


def test_zero_flips_give_clean_accuracy_and_no_sdc():
    res = run_campaign(CampaignConfig(flips=(0,), trials=3), identity_setup(), command=[])
    (p,) = res["points"]
    assert res["methods"]["unprotected"]["clean_accuracy"] == 1.0
    assert p["accuracy"] == {"mean": 1.0, "std": 0.0, "min": 1.0, "max": 1.0, "n": 3}
    assert p["sdc"]["count"] == 0 and p["changed"]["count"] == 0 and p["sdc"]["n"] == 3 * 64


def test_sign_flips_of_all_weights_invert_the_decision_and_are_undone():
    keep: list = []
    setup = identity_setup(keep)
    # 6 parameters, sign bit only: 6 flips hit every sign bit once -> W = -I, argmin wins.
    cfg = CampaignConfig(flips=(6,), trials=2, bits=(31,), methods=("unprotected", "ecc_oracle"))
    res = run_campaign(cfg, setup, command=[])
    unprot, ecc = res["points"]
    assert unprot["accuracy"]["mean"] == 0.0 and unprot["sdc"]["rate"] == 1.0
    assert ecc["accuracy"]["mean"] == 1.0 and ecc["sdc"]["count"] == 0
    lin = keep[0][0]
    assert torch.equal(bits.int_view(lin.weight.detach()), bits.int_view(torch.eye(2)))
    assert torch.equal(bits.int_view(lin.bias.detach()), bits.int_view(torch.zeros(2)))


def test_same_seed_same_numbers_other_seed_other_faults():
    cfg = CampaignConfig(target="both", flips=(1, 8), trials=4, seed=5)
    a = run_campaign(cfg, identity_setup(), command=[])
    b = run_campaign(cfg, identity_setup(), command=[])
    c = run_campaign(CampaignConfig(target="both", flips=(1, 8), trials=4, seed=6),
                     identity_setup(), command=[])
    assert json.dumps(numbers(a)) == json.dumps(numbers(b))
    assert a["points"][0]["seeds"] != c["points"][0]["seeds"]


def test_activation_target_and_record_fields():
    res = run_campaign(CampaignConfig(target="activations", flips=(64,), trials=3,
                                      bits=(30,), methods=("unprotected", "ecc_oracle")),
                       identity_setup(), command=["x"])
    unprot, ecc = res["points"]
    info = res["methods"]["unprotected"]
    # fx sites (the default where the model traces): the Linear's 64 x 2 fp32 output; Flatten
    # and Identity return views of it, the same memory, so they are no sites of their own.
    assert res["activation_sites"]["naming"] == "fx" and info["activation_naming"] == "fx"
    assert info["activation_sites"] == 1 and info["activation_bits"] == 128 * 32
    # Module-path sites (before fx sites): three leaf outputs, 384 elements, 32 bits each.
    old = run_campaign(CampaignConfig(target="activations", flips=(64,), trials=1, bits=(30,),
                                      activation_sites="modules"), identity_setup(), command=[])
    assert old["methods"]["unprotected"]["activation_sites"] == 3
    assert old["methods"]["unprotected"]["activation_bits"] == 384 * 32
    assert unprot["flips_drawn"] == [64, 64, 64] and ecc["flips_drawn"] == [0, 0, 0]
    assert unprot["changed"]["count"] > 0 and ecc["changed"]["count"] == 0
    for key in ("command", "machine", "config", "date_utc", "seed_rule"):
        assert key in res
    assert res["machine"]["torch"] == torch.__version__
    lo, hi = unprot["sdc"]["ci95"]
    assert lo <= unprot["sdc"]["rate"] <= hi


def test_bad_configurations_are_clear_errors():
    with pytest.raises(CampaignError, match="exceed"):
        run_campaign(CampaignConfig(flips=(10_000,), trials=1), identity_setup(), command=[])
    with pytest.raises(CampaignError, match="target"):
        CampaignConfig(target="registers")
    with pytest.raises(UnknownMethodError, match="unprotected"):
        get_method("magic")


def test_methods_follow_the_protocol():
    for m in (Unprotected(), EccOracle()):
        assert isinstance(m, Method)
        m.prepare(nn.Linear(2, 2), None, None)
        out, det = m.predict(torch.ones(3, 2))
        assert out.shape == (3, 2) and det.tolist() == [False] * 3
    assert set(Unprotected().injectable()) == set()  # nothing before prepare
    assert EccOracle().injectable() == {}


def test_metrics():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert Proportion(0, 100).to_dict()["ci95"][0] == 0.0
    s = Spread.of([1.0, 3.0])
    assert (s.mean, s.min, s.max) == (2.0, 1.0, 3.0) and s.std == pytest.approx(2**0.5)
    clean = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    faulty = torch.tensor([[1.0, 0.0], [1.0, 0.0], [float("nan"), 0.0]])
    o = compare(clean, faulty, torch.tensor([False, True, False]), torch.tensor([0, 1, 0]))
    assert o.changed.tolist() == [False, True, True] and o.sdc.tolist() == [False, False, True]
    assert o.nonfinite.tolist() == [False, False, True]
    assert o.correct.tolist() == [True, False, False]
    assert accurate_latency(10.0, 0.5) == 15.0


def test_cli_campaign_on_the_bundled_default_model(tmp_path, capsys):
    from save_ros.cli import main

    out = tmp_path / "c.json"
    rc = main(["robustness", "campaign", "--model", "digits_cnn", "--flips", "0,4", "--trials", "2",
               "--batch", "32", "--method", "unprotected,ecc_oracle", "--json", str(out),
               "--quiet"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert [(p["method"], p["flips"]) for p in res["points"]] == [
        ("unprotected", 0), ("unprotected", 4), ("ecc_oracle", 0), ("ecc_oracle", 4)]
    assert res["model"]["eval_data"]["n"] == 32
    assert res["points"][0]["sdc"]["count"] == 0
    assert "SDC rate" in capsys.readouterr().out
    assert main(["robustness", "campaign", "--model", "nope", "--trials", "1", "--quiet"]) == 2


def test_cli_campaign_on_the_policy_measures_task_success(tmp_path):
    from save_ros.cli import main

    out = tmp_path / "p.json"
    assert main(["robustness", "campaign", "--model", "cartpole_policy", "--flips", "0,4096",
                 "--trials", "1", "--batch", "32", "--episodes", "1", "--json", str(out),
                 "--quiet"]) == 0
    res = json.loads(out.read_text())
    clean, wrecked = res["points"]
    assert res["methods"]["unprotected"]["clean_success"] == 1.0
    assert clean["accuracy"]["mean"] == 1.0 and clean["sdc"]["count"] == 0
    # 4,096 of the policy's ~147k weight bits: it never balances the pole for 500 steps.
    assert wrecked["accuracy"]["mean"] == 0.0 and wrecked["changed"]["count"] > 0


def test_policy_activation_faults_hit_exactly_one_inference_per_trial():
    setup = identity_setup()
    clean_model = setup.build()
    faulted_calls: list[int] = []

    def episodes(policy, n_episodes: int) -> float:
        state = setup.x[:1]
        hits = sum(not torch.equal(policy(state), clean_model(state).detach())
                   for _ in range(n_episodes * setup.episode_steps))
        faulted_calls.append(hits)
        return 1.0

    setup.episodes, setup.episode_steps = episodes, 20
    cfg = CampaignConfig(target="activations", flips=(1,), trials=5, episodes=2, bits=(30,))
    res = run_campaign(cfg, setup, command=[])
    assert faulted_calls[0] == 0  # the fault-free reference run
    assert faulted_calls[1:] == [1] * 5
    assert res["methods"]["unprotected"]["clean_success"] == 1.0


def test_bit_error_rate_points_draw_binomial_counts():
    cfg = CampaignConfig(ber=(0.0, 1.0), trials=2, bits=(31,))
    zero, every = run_campaign(cfg, identity_setup(), command=[])["points"]
    assert (zero["ber"], zero["flips"], zero["flips_drawn"]) == (0.0, None, [0, 0])
    assert zero["sdc"]["count"] == 0
    # Rate 1 over the 6 sign bits flips all of them: W = -I, every decision inverted.
    assert every["flips_drawn"] == [6, 6] and every["accuracy"]["mean"] == 0.0
    half = run_campaign(CampaignConfig(ber=(0.5,), trials=40), identity_setup(), command=[])
    drawn = half["points"][0]["flips_drawn"]  # Binomial(192, 0.5): mean 96, sd ~6.9
    assert abs(sum(drawn) / len(drawn) - 96) < 6 and len(set(drawn)) > 5
