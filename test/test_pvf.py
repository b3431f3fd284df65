"""Per-layer PVF: exhaustive counts against a brute-force oracle, and the CLI."""

import json

import torch
from torch import nn

from save_ros.core import bits
from save_ros.eval.campaign import EvalSetup
from save_ros.eval.pvf import layer_pvf


def two_layer_setup() -> EvalSetup:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, generator=gen)

    def build() -> nn.Module:
        torch.manual_seed(2)
        return nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 3))

    return EvalSetup(name="tiny", build=build, x=x, y=None)


def brute_force_changes(model: nn.Module, x: torch.Tensor, layer: str) -> int:
    """Flip every bit of every parameter of `layer` on a copy; count output-changing flips."""
    clean = model(x).argmax(1)
    count = 0
    for pname, p in dict(model.named_parameters()).items():
        if pname.rpartition(".")[0] != layer:
            continue
        golden = p.detach().clone()
        for i in range(p.numel()):
            for b in range(32):
                flat = golden.clone().reshape(-1)
                flat[i] = bits.flipped(golden.reshape(-1)[i:i + 1], b)[0]
                with torch.no_grad():
                    p.copy_(flat.reshape(p.shape))
                    out = model(x)
                    p.copy_(golden)
                bad = ~torch.isfinite(out).all(1) | (out.argmax(1) != clean)
                count += bool(bad.any())
    return count


def test_exhaustive_pvf_matches_the_brute_force_count():
    setup = two_layer_setup()
    result = layer_pvf(setup, samples=10_000, seed=0)  # more than the bits: every bit once
    rows = {r["layer"]: r for r in result["layers"]}
    assert list(rows) == ["0", "2"]
    assert rows["0"]["flips"] == rows["0"]["bits"] == (3 * 2 + 2) * 32
    oracle = setup.build().eval()
    for layer, row in rows.items():
        expected = brute_force_changes(oracle, setup.x, layer)
        assert row["pvf"]["count"] == expected
        assert 0 < expected < row["flips"]  # sign/exponent flips matter, low mantissa never
        lo, hi = row["pvf"]["ci95"]
        assert lo <= row["pvf"]["rate"] <= hi


def test_cli_pvf_on_the_default_model(tmp_path, capsys):
    from save_ros.cli import main

    out = tmp_path / "pvf.json"
    assert main(["robustness", "pvf", "--model", "digits_cnn", "--samples", "5", "--batch", "16",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["layer"] for r in res["layers"]] == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    assert all(r["flips"] == 5 for r in res["layers"])
    assert "PVF" in capsys.readouterr().out
