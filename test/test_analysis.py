"""Analysis records: save / load round trips and the hash key."""

import json

import pytest
import torch

from save_ros import models
from save_ros.core import bits
from save_ros.core.analysis import Analysis, AnalysisFormatError, RangeSource, analysis_key
from save_ros.core.select import analyze, key_for


@pytest.fixture(scope="module")
def policy():
    model = models.load("cartpole_policy")
    spec = models.get_spec("cartpole_policy")
    xc, _ = models.dataset("cartpole_policy", "calib")
    box = (list(spec.input_low), list(spec.input_high))
    return model, xc[:128], box, analyze(model, xc[:1], box, calibration=xc[:128])


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_save_load_round_trip(policy, tmp_path, suffix):
    _, _, _, a = policy
    path = a.save(tmp_path / f"a{suffix}")
    b = Analysis.load(path, expect_key=a.key)
    assert b.to_dict() == a.to_dict()
    assert b.tensors["fc1.weight"].check is RangeSource.SOUND
    assert b.tensors["fc1"].bit_shares == a.tensors["fc1"].bit_shares


def test_load_rejects_a_stale_or_broken_file(policy, tmp_path):
    _, _, _, a = policy
    path = a.save(tmp_path / "a.json")
    with pytest.raises(AnalysisFormatError, match="re-run the analysis"):
        Analysis.load(path, expect_key="0" * 64)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(AnalysisFormatError, match="not a readable analysis"):
        Analysis.load(tmp_path / "bad.json")
    data = json.loads(path.read_text()) | {"schema": 99}
    (tmp_path / "old.json").write_text(json.dumps(data))
    with pytest.raises(AnalysisFormatError, match="schema"):
        Analysis.load(tmp_path / "old.json")
    with pytest.raises(AnalysisFormatError, match=".json, .yaml"):
        a.save(tmp_path / "a.txt")


def test_key_changes_with_one_weight_bit_and_with_the_box(policy):
    model, _, box, a = policy
    arch = a.key  # the analysis key includes settings; compare keys built the same way
    k0 = analysis_key(model, "arch", box)
    assert analysis_key(model, "arch", box) == k0
    w = model.fc2.weight.data
    bits.flip_(w, 7, 0)  # the least significant bit of one weight
    try:
        assert analysis_key(model, "arch", box) != k0
    finally:
        bits.flip_(w, 7, 0)
    assert analysis_key(model, "arch", box) == k0
    assert analysis_key(model, "arch", (box[0], [v * 2 for v in box[1]])) != k0
    assert analysis_key(model, "other arch", box) != k0
    assert arch == analyze(model, torch.zeros(1, 4), box,
                           calibration=policy[1]).key  # same model, box, settings


def test_key_for_matches_analyze_without_running_it(policy):
    model, _, box, a = policy
    assert key_for(model, torch.zeros(1, 4), box) == a.key
