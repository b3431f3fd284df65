"""protect() with several inputs: tuple, dict and integer-token inputs; bad input is an InputError.

Each net is protected through `save_ros.protect()`; verified outputs equal the plain forward
bit for bit, a weight flip is repaired bit-exactly, an activation flip is detected, calibration
comes per input, and inputs that do not fit (structure, dtype, shape, NaN / Inf, outside the
box) are refused before inference, never counted as faults.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from save_ros import ProtectConfig, protect
from save_ros.core import bits
from save_ros.core.box import InputRangeError
from save_ros.core.cuda import cuda_available
from save_ros.core.cuda.runtime import CudaProtectedModel
from save_ros.core.inputs import InputError, ModelInputs
from save_ros.core.select import SelectConfig, analyze, key_for
from save_ros.faults import ActivationFaults, BitFault

T, D = 16, 7  # action chunk: 16 steps of 7 joints


class Visuomotor(nn.Module):
    """Image + joint state -> an action chunk (N, 16, 7), like a visuomotor policy."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.img = nn.Linear(32, 32)
        self.joint = nn.Linear(D, 32)
        self.head = nn.Linear(64, T * D)

    def forward(self, image: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
        f = self.pool(torch.relu(self.conv(image))).flatten(1)
        h = torch.cat([torch.relu(self.img(f)), torch.tanh(self.joint(joints))], dim=1)
        return self.head(h).reshape(-1, T, D)


class TokenNet(nn.Module):
    """Token ids (integer, exact) + a float state -> 5 logits."""

    def __init__(self, vocab: int = 50) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 16)
        self.state = nn.Linear(4, 16)
        self.out = nn.Linear(16, 5)

    def forward(self, tokens: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        h = self.emb(tokens).mean(1) + torch.relu(self.state(state))
        return self.out(h)


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.rand(n, D, generator=g) * 2 - 1


BOXES = ((0.0, 1.0), (-1.0, 1.0))


def _cfg(calibration, task: str = "auto") -> ProtectConfig:
    """Nothing in the reliable pool (every tensor is checked); few sensitivity samples in large
    chunks, so the tests stay fast on a busy 2-core VM."""
    return ProtectConfig(calibration=calibration, reliable_budget_bytes=0,
                         selection=SelectConfig(task=task, sens_samples=8, memory_factor=256))


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    net = Visuomotor().eval()
    ref = copy.deepcopy(net)
    img, jnt = _data(64, 1)
    pm = protect(net, (img[:1], jnt[:1]), BOXES,
                 _cfg((img, jnt), "control"))
    yield pm, ref, _data(8, 2)
    pm.close()


def test_two_inputs_clean_inference_is_verified_and_equals_the_plain_forward(policy):
    pm, ref, (img, jnt) = policy
    with torch.inference_mode():
        clean = ref(img, jnt)
    r = pm.infer((img, jnt))
    assert r.verified and not r.status.faulty
    assert r.output.shape == (8, T, D) and torch.equal(r.output, clean)
    with torch.inference_mode():
        clean_1 = ref(img[:1], jnt[:1])  # batch 1 may round otherwise than batch 8
    assert torch.equal(pm.infer([img[:1], jnt[:1]]).output, clean_1)  # a list, batch 1
    assert pm.analysis.settings["calibration_samples"] == 64
    assert pm.analysis.task == "regression"  # control: every action element in tolerance
    assert [s.name for s in pm.inputs.slots] == ["image", "joints"]


def test_two_inputs_weight_flip_is_repaired_bit_exactly(policy):
    pm, ref, (img, jnt) = policy
    with torch.inference_mode():
        clean = ref(img, jnt)
    w = pm.normal_tensors()["joint.weight"]
    bits.flip_(w, 5, 30)
    r = pm.infer((img, jnt))
    assert r.verified and torch.equal(r.output, clean)
    assert "joint.weight" in r.status.repaired
    # Edit re-ran on the saved inputs: from the layer that reads the second input where the
    # plan keeps activations, else (memory checksums) the whole forward from both inputs
    expect = "joint" if pm._plan.keep is None else "input (memory checksums keep no activations)"
    assert r.status.rerun_from == expect
    assert torch.equal(bits.int_view(w), bits.int_view(ref.joint.weight.detach()))


def test_two_inputs_activation_flip_is_detected(policy):
    pm, ref, (img, jnt) = policy
    with torch.inference_mode():
        clean = ref(img, jnt)
    site = next(s for s in ("joint", "img", "conv") if s not in pm.reliable_activation_sites())
    with ActivationFaults(pm.model, [BitFault(site, 3, 30)]):
        r = pm.infer((img, jnt))
    assert r.status.detections and r.verified
    assert torch.equal(r.output, clean)


@pytest.mark.parametrize("case", ["nan", "inf", "box", "dtype", "shape", "structure", "batch",
                                  "device_count"])
def test_bad_input_is_an_input_error_before_inference_never_a_fault(policy, case):
    pm, _, (img, jnt) = policy
    before = pm.stats()
    bad_j = jnt.clone()
    x, kind, msg = None, None, None
    if case == "nan":
        bad_j[2, 3] = float("nan")
        x, kind, msg = (img, bad_j), "nonfinite", "'joints' holds 1 NaN"
    elif case == "inf":
        bad_j[0, 0] = float("inf")
        x, kind, msg = (img, bad_j), "nonfinite", "infinite"
    elif case == "box":
        bad_j[1, 6] = 1.5
        x, kind, msg = (img, bad_j), "out_of_range", r"'joints' lies outside .* 1\.5"
    elif case == "dtype":
        x, kind, msg = (img.double(), jnt), "dtype", r"'image' is float64; expected 'image' " \
            r"\(N, 3, 8, 8\) float32"
    elif case == "shape":
        x, kind, msg = (torch.rand(8, 3, 12, 12), jnt), "shape", r"expected 'image' \(N, 3, 8, 8\)"
    elif case == "structure":
        x, kind, msg = img, "structure", "a tuple / list of 2 tensors"
    elif case == "batch":
        x, kind, msg = (img, jnt[:3]), "shape", "batch sizes differ"
    else:
        x, kind, msg = (img, jnt, jnt), "structure", "a tuple of 3"
    with pytest.raises(InputError, match=msg) as err:
        pm.infer(x)
    assert err.value.kind == kind
    after = pm.stats()
    assert after["faulty"] == before["faulty"] and after["inferences"] == before["inferences"]
    assert after["rejected_inputs"] == before["rejected_inputs"] + 1


class DictNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(3, 8)
        self.out = nn.Linear(8, 4)

    def forward(self, pos: torch.Tensor, vel: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.a(pos)) * torch.sigmoid(self.b(vel)))


def test_dict_inputs_go_as_keywords_with_boxes_and_calibration_keyed_by_name():
    torch.manual_seed(1)
    net = DictNet().eval()
    ref = copy.deepcopy(net)
    g = torch.Generator().manual_seed(3)
    calib = {"vel": torch.rand(32, 3, generator=g) - 0.5, "pos": torch.rand(32, 6, generator=g)}
    ex = {"vel": calib["vel"][:1], "pos": calib["pos"][:1]}  # not in forward's order
    with protect(net, ex, {"pos": (0.0, 1.0), "vel": (-0.5, 0.5)},
                 _cfg(calib, "regression")) as pm:
        assert [s.name for s in pm.inputs.slots] == ["pos", "vel"]  # forward's order
        x = {"pos": torch.rand(4, 6, generator=g), "vel": torch.rand(4, 3, generator=g) - 0.5}
        with torch.inference_mode():
            clean = ref(**x)
        r = pm.infer(x)
        assert r.verified and torch.equal(r.output, clean)
        w = pm.normal_tensors()["b.weight"]
        bits.flip_(w, 2, 29)
        r = pm.infer(x)
        assert r.verified and torch.equal(r.output, clean) and "b.weight" in r.status.repaired
        with ActivationFaults(pm.model, [BitFault("a", 1, 30)]):
            r = pm.infer(x)
        assert r.status.detections and torch.equal(r.output, clean)
        with pytest.raises(InputError, match=r"keys \['pos'\] do not match") as err:
            pm.infer({"pos": x["pos"]})
        assert err.value.kind == "names"
        assert pm.stats()["faulty"] == 2  # the two flips above, not the refused input


def test_dict_input_range_must_name_inputs():
    net = DictNet().eval()
    ex = {"pos": torch.rand(1, 6), "vel": torch.rand(1, 3)}
    with pytest.raises(InputRangeError, match="not inputs"):
        ModelInputs.of(net, ex, {"pos": (0, 1), "speed": (0, 1)})
    with pytest.raises(InputRangeError, match="one box per input"):
        ModelInputs.of(net, ex, (0.0, 1.0))  # a single box for two inputs is ambiguous
    with pytest.raises(InputError, match="name no parameter"):
        ModelInputs.of(net, {"pos": torch.rand(1, 6), "v": torch.rand(1, 3)}, None)


@pytest.fixture(scope="module")
def tokens():
    torch.manual_seed(2)
    net = TokenNet().eval()
    ref = copy.deepcopy(net)
    g = torch.Generator().manual_seed(4)
    tok = torch.randint(0, 50, (48, 8), generator=g)
    st = torch.rand(48, 4, generator=g)
    pm = protect(net, (tok[:1], st[:1]), ((0, 49), (0.0, 1.0)), _cfg((tok, st)))
    assert not pm.analysis.unsupported  # embedding of any token: the table's hull, sound
    yield pm, ref, (tok[:8], st[:8])
    pm.close()


def test_token_input_is_exact_embedding_box_is_sound(tokens):
    pm, ref, (tok, st) = tokens
    slot = pm.inputs.slots[0]
    assert slot.exact and slot.box is None and slot.int_range == (0, 49)
    emb = pm.analysis.tensors["emb"]
    table = ref.emb.weight.detach()
    # the sound box of the embedding output is the hull of the whole table, for any token
    assert emb.sound_low <= float(table.min()) and emb.sound_high >= float(table.max())
    assert "tokens" not in pm.analysis.tensors  # an integer input is never attributed
    with torch.inference_mode():
        clean = ref(tok, st)
    r = pm.infer((tok, st))
    assert r.verified and torch.equal(r.output, clean)


def test_token_net_weight_flip_repaired_and_activation_flip_detected(tokens):
    pm, ref, (tok, st) = tokens
    with torch.inference_mode():
        clean = ref(tok, st)
    w = pm.normal_tensors()["emb.weight"]
    row = int(tok[0, 0])
    bits.flip_(w, row * 16 + 3, 30)
    r = pm.infer((tok, st))
    assert r.verified and torch.equal(r.output, clean) and "emb.weight" in r.status.repaired
    site = next(s for s in ("state", "emb") if s not in pm.reliable_activation_sites())
    with ActivationFaults(pm.model, [BitFault(site, 2, 30)]):
        r = pm.infer((tok, st))
    assert r.status.detections and torch.equal(r.output, clean)


def test_token_input_errors(tokens):
    pm, _, (tok, st) = tokens
    faulty = pm.stats()["faulty"]
    bad = tok.clone()
    bad[0, 0] = 50
    with pytest.raises(InputError, match=r"'tokens' holds 50, outside its valid values") as e:
        pm.infer((bad, st))
    assert e.value.kind == "out_of_range"
    with pytest.raises(InputError, match=r"'tokens' is float32; expected 'tokens' \(N, 8\) "
                                         "int64") as e:
        pm.infer((tok.float(), st))
    assert e.value.kind == "dtype"
    assert pm.stats()["faulty"] == faulty and pm.stats()["rejected_inputs"] == 2


class CommandNet(nn.Module):
    """A discrete command used as a number: no interval rule can bound it soundly."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, cmd: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * cmd.float()


def test_a_float_computed_from_an_integer_input_is_calibrated_not_sound():
    net = CommandNet().eval()
    g = torch.Generator().manual_seed(0)
    x, cmd = torch.rand(16, 3, generator=g), torch.randint(0, 3, (16, 1), generator=g)
    a = analyze(net, (x[:1], cmd[:1]), ((0.0, 1.0), (0, 2)), (x, cmd),
                config=SelectConfig(task="regression", sens_samples=4))
    assert [u.split(":")[0] for u in a.unsupported] == ["float_1"]  # cmd.float()
    assert a.tensors["fc"].check.value == "sound"  # from the float input alone: sound
    assert "mul" in a.unsound


def test_token_ids_without_a_range_are_checked_against_the_embedding_table():
    torch.manual_seed(5)
    net = TokenNet(vocab=30).eval()
    g = torch.Generator().manual_seed(6)
    tok, st = torch.randint(0, 30, (16, 8), generator=g), torch.rand(16, 4, generator=g)
    with protect(net, (tok[:1], st[:1]), (None, (0.0, 1.0)), _cfg((tok, st))) as pm:
        assert pm.inputs.slots[0].int_range == (0, 29)  # from nn.Embedding(30, ...)
        assert pm.analysis.input_range["inputs"][0]["range"] is None  # the key is the user's
        key = pm.analysis.key
        assert key == key_for(net, (tok[:1], st[:1]), (None, (0.0, 1.0)),
                              pm.config.select_config())
        pm.reanalyze()
        assert pm.analysis.key == key  # re-analysed for the declared inputs, same key
        assert pm.infer((tok[:2], st[:2])).verified
        bad = tok[:2].clone()
        bad[0, 0] = 30
        with pytest.raises(InputError, match="'tokens' holds 30, outside its valid values"):
            pm.infer((bad, st[:2]))


def test_integer_box_is_optional_and_a_float_input_needs_one():
    net = TokenNet().eval()
    ex = (torch.zeros(1, 8, dtype=torch.long), torch.rand(1, 4))
    spec = ModelInputs.of(net, ex, (None, (0.0, 1.0)))
    assert spec.slots[0].int_range is None
    with pytest.raises(InputRangeError, match="'state' is a float input and needs a box"):
        ModelInputs.of(net, ex, ((0, 49), None))


def test_analysis_key_covers_every_input_box_and_shape():
    net = Visuomotor().eval()
    img, jnt = _data(1, 5)
    k = key_for(net, (img, jnt), BOXES)
    assert key_for(net, (img, jnt), [(0.0, 1.0), (-1.0, 1.0)]) == k  # list or tuple: same
    assert key_for(net, (img, jnt), ((0.0, 1.0), (-2.0, 2.0))) != k  # second box
    assert key_for(net, (torch.rand(1, 3, 12, 12), jnt), BOXES) != k  # a shape


def test_single_tensor_keeps_working_and_other_spatial_sizes_are_refused():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3)).eval()
    ref = copy.deepcopy(net)
    x = torch.rand(16, 1, 8, 8)
    with protect(net, x[:1], (0.0, 1.0), _cfg(x)) as pm:
        with torch.inference_mode():
            clean = ref(x[:5])
        r = pm.infer(x[:5])  # another batch size: fine
        assert r.verified and torch.equal(r.output, clean)
        with pytest.raises(InputError, match=r"shape \(2, 1, 10, 10\); expected 'input' "
                                             r"\(N, 1, 8, 8\) float32") as e:
            pm.infer(torch.rand(2, 1, 10, 10))  # would run (adaptive pool), never analysed
        assert e.value.kind == "shape"
        with pytest.raises(InputError, match="expected 'input' .*float32") as e:
            pm.infer(x[:2].double())
        assert e.value.kind == "dtype"
        with pytest.raises(InputError, match="expected 'input' .*float32"):
            pm.infer(x[0])  # no batch dim


def test_cuda_backend_logic_with_two_inputs_runs_eagerly_on_the_cpu():
    """The CUDA backend's program (one static buffer and one box per input, the input flag)
    without a GPU: use_graph=False runs the same CheckProgram eagerly."""
    torch.manual_seed(0)
    net = Visuomotor().eval()
    ref = copy.deepcopy(net)
    img, jnt = _data(32, 1)
    cfg = _cfg((img, jnt), "control")
    a = analyze(net, (img[:1], jnt[:1]), BOXES, (img, jnt), config=cfg.selection)
    pm = CudaProtectedModel(net, (img[:1], jnt[:1]), BOXES, cfg, a, use_graph=False)
    x = (img[:4], jnt[:4])
    with torch.inference_mode():
        clean = ref(*x)
    r = pm.infer(x)
    assert r.verified and torch.equal(r.output, clean)
    assert len(pm._programs[next(iter(pm._programs))].static_in) == 2
    bits.flip_(pm.normal_tensors()["joint.weight"], 3, 30)
    r = pm.infer(x)
    assert r.verified and torch.equal(r.output, clean) and "joint.weight" in r.status.repaired
    for k, v, kind in ((1, float("nan"), "nonfinite"), (1, 2.0, "out_of_range"),
                       (0, -0.5, "out_of_range")):
        bad = [t.clone() for t in x]
        bad[k].view(-1)[5] = v
        with pytest.raises(InputError) as e:
            pm.infer(tuple(bad))
        assert e.value.kind == kind and pm.inputs.slots[k].name in str(e.value)
    st = pm.stats()
    assert st["rejected_inputs"] == 3 and st["faulty"] == 1  # the weight flip only
    with pytest.raises(InputError, match="expected 'joints'"):
        pm.infer((img[:4], jnt[:4, :5]))
    assert pm.infer(x).verified  # the gate was released after every refusal


def test_cuda_backend_logic_with_an_integer_input_on_the_cpu():
    torch.manual_seed(2)
    net = TokenNet().eval()
    ref = copy.deepcopy(net)
    g = torch.Generator().manual_seed(4)
    tok, st = torch.randint(0, 50, (16, 8), generator=g), torch.rand(16, 4, generator=g)
    boxes = ((0, 49), (0.0, 1.0))
    cfg = _cfg((tok, st))
    a = analyze(net, (tok[:1], st[:1]), boxes, (tok, st), config=cfg.selection)
    pm = CudaProtectedModel(net, (tok[:1], st[:1]), boxes, cfg, a, use_graph=False)
    with torch.inference_mode():
        clean = ref(tok[:4], st[:4])
    r = pm.infer((tok[:4], st[:4]))
    assert r.verified and torch.equal(r.output, clean)
    bad = tok[:4].clone()
    bad[2, 1] = -1
    with pytest.raises(InputError, match="'tokens' holds -1") as e:
        pm.infer((bad, st[:4]))
    assert e.value.kind == "out_of_range" and pm.stats()["faulty"] == 0


@pytest.mark.parametrize("form", ["scalar", "channel", "expanded", "elementwise"])
def test_box_checks_agree_whatever_form_the_box_came_in(form):
    low, high = torch.tensor([0.0, -1.0, 0.5]), torch.tensor([1.0, 1.0, 2.0])
    if form == "scalar":
        low, high = torch.zeros(3), torch.ones(3)
    box = (low.tolist(), high.tolist())
    if form == "expanded":  # what ModelSpec.input_range() gives: per channel, spelled out
        box = (low[:, None, None].expand(3, 4, 4), high[:, None, None].expand(3, 4, 4))
    if form == "elementwise":
        low = low[:, None, None].expand(3, 4, 4).clone()
        low[0, 1, 1] = 0.25  # one element with a bound of its own
        box = (low, high[:, None, None].expand(3, 4, 4))
    spec = ModelInputs.of(None, torch.zeros(1, 3, 4, 4), box)
    how = spec._checks(torch.device("cpu"))[0][-1]  # a reduction unless elementwise
    assert how == {"scalar": "scalar", "channel": "channel", "expanded": "channel",
                   "elementwise": "full"}[form]
    lo = low if low.dim() == 3 else low[:, None, None].expand(3, 4, 4)
    hi = high[:, None, None].expand(3, 4, 4)
    good = (lo + (hi - lo) * torch.rand(5, 3, 4, 4)).clamp(lo, hi)
    spec.check_values((good,))
    for value, kind in ((float("nan"), "nonfinite"), (float("inf"), "nonfinite"),
                        (-2.0, "out_of_range"), (2.5, "out_of_range")):
        bad = good.clone()
        bad[3, 2, 1, 0] = value
        with pytest.raises(InputError) as e:
            spec.check_values((bad,))
        assert e.value.kind == kind and "element" in str(e.value) or kind == "nonfinite"
    if form == "elementwise":
        bad = good.clone()
        bad[0, 0, 1, 1] = 0.1  # inside its channel's bound, below its own
        with pytest.raises(InputError, match="not in \\[0.25, 1\\]"):
            spec.check_values((bad,))


def test_an_open_box_still_refuses_inf():
    net = DictNet().eval()
    ex = (torch.rand(1, 6), torch.rand(1, 3))
    spec = ModelInputs.of(net, ex, ((0.0, float("inf")), (-1.0, 1.0)))
    xs = spec.normalize((torch.full((2, 6), 1e30), torch.zeros(2, 3)))
    spec.check_values(xs)  # large but finite: inside the open box
    with pytest.raises(InputError, match="infinite") as e:
        spec.check_values((torch.full((2, 6), float("inf")), torch.zeros(2, 3)))
    assert e.value.kind == "nonfinite"


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device")
def test_two_inputs_on_the_cuda_backend():
    torch.manual_seed(0)
    net = Visuomotor().eval().cuda()
    ref = copy.deepcopy(net)
    img, jnt = (t.cuda() for t in _data(64, 1))
    with protect(net, (img[:1], jnt[:1]), BOXES, _cfg((img, jnt), "control")) as pm:
        assert type(pm).__name__ == "CudaProtectedModel"
        x = (img[:4], jnt[:4])
        with torch.inference_mode():
            clean = ref(*x)
        r = pm.infer(x)
        assert r.verified and torch.equal(r.output, clean)
        bits.flip_(pm.normal_tensors()["head.weight"], 7, 30)
        r = pm.infer(x)
        assert r.verified and torch.equal(r.output, clean) and r.status.repaired
        bad = jnt[:4].clone()
        bad[0, 0] = float("nan")
        with pytest.raises(InputError) as e:
            pm.infer((img[:4], bad))
        assert e.value.kind == "nonfinite"
        assert pm.stats()["rejected_inputs"] == 1
        assert pm.infer(x).verified  # the graph's gate was released


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device")
def test_out_of_table_token_ids_on_cuda_are_refused_before_the_graph_runs():
    """An embedding index outside the table would be a device-side assert (the CUDA context
    lost); the host check refuses it first and the model keeps serving."""
    torch.manual_seed(2)
    net = TokenNet().eval().cuda()
    ref = copy.deepcopy(net)
    g = torch.Generator().manual_seed(4)
    tok = torch.randint(0, 50, (16, 8), generator=g).cuda()
    st = torch.rand(16, 4, generator=g).cuda()
    with protect(net, (tok[:1], st[:1]), (None, (0.0, 1.0)), _cfg((tok, st))) as pm:
        bad = tok[:2].clone()
        bad[1, 3] = 50
        with pytest.raises(InputError, match="'tokens' holds 50"):
            pm.infer((bad, st[:2]))
        with torch.inference_mode():
            clean = ref(tok[:2], st[:2])
        r = pm.infer((tok[:2], st[:2]))
        assert r.verified and torch.equal(r.output, clean)
