"""Tables a person reads: no raw dicts, nothing cut off, every column explained."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from save_ros.core.select import analyze
from save_ros.eval.analyze_cli import table
from save_ros.eval.campaign import CampaignConfig, run_campaign
from save_ros.eval.campaign_table import describe_data, format_table, header_lines
from save_ros.eval.table import counts_text, render


def test_render_sizes_columns_to_their_widest_cell() -> None:
    text = render(["name", "n"], [["a_rather_long_tensor_name.weight", 3], ["b", 12345]],
                  notes=["n: how many"])
    assert text.splitlines() == [
        "name                                  n",
        "---------------------------------------",
        "a_rather_long_tensor_name.weight      3",
        "b                                 12345",
        "n: how many",
    ]
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        render(["a", "b", "c"], [[1, 2]])
    assert counts_text({"range": 4, "dmr": 2}) == "range 4, dmr 2"


def test_eval_data_is_described_in_words() -> None:
    data = {"split": "test", "n": 256, "of": 540, "stride": 2, "episodes_per_trial": 0}
    assert describe_data(data) == "test split, 256 samples of 540, every 2nd"
    assert describe_data({"n": 8, "source": "random"}) == "8 samples, source random"


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a_layer_whose_name_is_longer_than_the_old_column = nn.Linear(4, 3)
        self.relu = nn.ReLU()
        self.out = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.relu(self.a_layer_whose_name_is_longer_than_the_old_column(x)))


def test_analysis_table_keeps_names_and_explains_its_columns() -> None:
    torch.manual_seed(0)
    net = _Net().eval()
    calib = torch.rand(32, 4)
    text = table(analyze(net, calib[:1], (0.0, 1.0), calibration=calib))
    lines = text.splitlines()
    assert lines[0].split() == ["tensor", "kind", "elements", "range", "check", "looseness",
                                "robust", "ranging", "vulnerable", "vulnerable", "bits", "score"]
    weight = next(ln for ln in lines
                  if ln.startswith("a_layer_whose_name_is_longer_than_the_old_column.weight "))
    assert weight.split()[1:3] == ["weight", "12"]
    assert any(ln.split()[1] == "activation" for ln in lines[2:] if ln and ln[0] != " ")
    for column in ("range check:", "looseness:", "robust / ranging / vulnerable:", "score:"):
        assert any(ln.startswith(column) for ln in lines), column


def test_campaign_table_says_why_full_dmr_has_no_accuracy_and_no_sdc() -> None:
    """4,096 weight flips make every output NaN: full DMR flags them all (NaN != NaN) but its
    two runs read the same corrupted weights, so nothing is repaired: accuracy 0, SDC 0."""
    cfg = CampaignConfig(model="digits_cnn", target="weights", flips=(4096,), trials=2, seed=0,
                         methods=("unprotected", "full_dmr"), batch=32, episodes=0)
    result = run_campaign(cfg)
    dmr = next(p for p in result["points"] if p["method"] == "full_dmr")
    assert dmr["accuracy"]["mean"] == 0.0 and dmr["sdc"]["rate"] == 0.0
    assert dmr["detected"]["rate"] == dmr["nonfinite"]["rate"] == 1.0
    head = "\n".join(header_lines(result))
    text = format_table(result)
    assert "{" not in head + text
    assert head.startswith("digits_cnn: test split, 32 samples of 540, every")
    assert "false alarms (fault-free samples flagged): none" in head
    row = next(ln for ln in text.splitlines() if ln.startswith("full_dmr "))
    assert row.split()[3:9] == ["0.000", "±", "0.000", "0.00..0.00", "1.0000", "0.0000"]
    notes = " ".join(text.split())
    assert "detected but not repaired" in notes and "full_dmr at 4096 flips" in notes
    assert "unprotected at 4096" not in notes  # its wrong outputs are silent: SDC, not flagged
