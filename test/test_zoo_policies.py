"""The zoo's policies: built from their architectures, several inputs, action chunks, dtypes."""

from __future__ import annotations

import pytest
import torch
from torch import fx

from save_ros.core.box import InputBox
from save_ros.models import zoo
from save_ros.models.zoo import policies, rdt
from save_ros.models.zoo.decision_transformer import DTConfig

FAST = ["decision_transformer", "visuomotor", "rdt_policy_tiny"]
OUT_SHAPES = {"decision_transformer": (2, 20, 6), "visuomotor": (2, 16, 7),
              "rdt_policy_tiny": (2, 64, 14)}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def built():
    return {name: zoo.build_policy(name) for name in FAST}


def _run(model, inputs):
    with torch.inference_mode():
        return model(*inputs)


def test_the_zoo_lists_and_builds_its_policies_by_name():
    assert zoo.available_policies() == ["decision_transformer", "visuomotor", "visuomotor_tiny",
                                        "rdt_policy", "rdt_policy_tiny"]
    assert "rdt_policy" not in zoo.available()  # the image classifiers keep their own list
    model = zoo.build("rdt_policy_tiny")
    assert isinstance(model, rdt.RDTPolicy) and not model.training
    with pytest.raises(zoo.UnknownZooModelError, match="the zoo's policies are"):
        zoo.build_policy("cogact")
    with pytest.raises(zoo.UnknownZooModelError, match="and the policies decision_transformer"):
        zoo.build("cogact")


def test_rdt_policy_has_over_300m_parameters_counted_without_memory():
    skeleton = zoo.build_policy("rdt_policy", device="meta")
    assert all(p.is_meta for p in skeleton.parameters())
    n = sum(p.numel() for p in skeleton.parameters())
    assert n >= 300_000_000 and n == policies.parameter_count("rdt_policy")
    assert n == rdt.parameter_count(rdt.RDTConfig())
    assert skeleton.cfg.horizon == 64 and skeleton.cfg.action_dim == 14
    assert skeleton.cfg.steps == 5


@pytest.mark.parametrize("name", FAST)
def test_the_meta_count_is_the_built_models_count(built, name):
    assert policies.parameter_count(name) == sum(p.numel() for p in built[name].parameters())


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_in_each_dtype_gives_the_chunk(built, name, dtype):
    model = zoo.build_policy(name, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}
    inputs = zoo.example_inputs(name, batch=2, dtype=dtype)
    out = _run(model, inputs)
    assert tuple(out.shape) == OUT_SHAPES[name] and out.dtype == dtype
    assert bool(torch.isfinite(out).all())
    ref = _run(built[name], zoo.example_inputs(name, batch=2))
    # the same weights rounded to dtype: the chunk agrees with fp32 to that dtype's precision
    assert torch.allclose(out.float(), ref, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("name", FAST)
def test_example_inputs_lie_in_their_boxes(name):
    inputs = zoo.example_inputs(name, batch=3, seed=7)
    boxes = zoo.input_boxes(name)
    assert len(inputs) == len(boxes) == len(zoo.input_names(name))
    for x, box in zip(inputs, boxes, strict=True):
        assert InputBox.of(box, x.shape[1:]).contains(x.float())
    again = zoo.example_inputs(name, batch=3, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(inputs, again, strict=True))
    other = zoo.example_inputs(name, batch=3, seed=8)
    assert not all(torch.equal(a, b) for a, b in zip(inputs, other, strict=True))


def test_decision_transformer_timesteps_are_int64_and_in_range():
    rtg, states, actions, timesteps = zoo.example_inputs("decision_transformer", batch=4)
    assert timesteps.dtype == torch.int64 and tuple(timesteps.shape) == (4, 20)
    assert int(timesteps.min()) >= 0 and int(timesteps.max()) < DTConfig().max_ep_len
    assert bool((timesteps.diff(dim=1) == 1).all())  # a window of consecutive steps
    assert tuple(rtg.shape) == (4, 20, 1) and tuple(states.shape) == (4, 20, 17)
    assert tuple(actions.shape) == (4, 20, 6)


def test_decision_transformer_is_causal(built):
    """The action at t comes from s_t's token: it sees R_1..t, s_1..t and a_1..t-1 only."""
    model = built["decision_transformer"]
    rtg, states, actions, timesteps = zoo.example_inputs("decision_transformer")
    base = _run(model, (rtg, states, actions, timesteps))
    later_state = states.clone()
    later_state[:, 10] += 1.0
    out = _run(model, (rtg, later_state, actions, timesteps))
    assert torch.equal(out[:, :10], base[:, :10]) and not torch.equal(out[:, 10:], base[:, 10:])
    own_action = actions.clone()
    own_action[:, 10] = -own_action[:, 10]
    out = _run(model, (rtg, states, own_action, timesteps))
    assert torch.equal(out[:, :11], base[:, :11]) and not torch.equal(out[:, 11:], base[:, 11:])


def test_visuomotor_uses_both_the_image_and_the_joints(built):
    model = built["visuomotor"]
    image, joints = zoo.example_inputs("visuomotor", batch=1)
    base = _run(model, (image, joints))
    assert not torch.equal(_run(model, (image.flip(-1), joints)), base)
    assert not torch.equal(_run(model, (image, joints * 0.5)), base)


def test_same_noise_gives_the_bit_identical_chunk_other_noise_another(built):
    model = built["rdt_policy_tiny"]
    noise, state, lang, img = zoo.example_inputs("rdt_policy_tiny", batch=2)
    first = _run(model, (noise, state, lang, img))
    again = _run(zoo.build_policy("rdt_policy_tiny"), (noise.clone(), state, lang, img))
    assert torch.equal(first, again)  # re-built from the seed, re-run: the same bits
    other = _run(model, (torch.randn_like(noise).clamp(-5, 5), state, lang, img))
    assert not torch.equal(first, other)
    assert float(first.abs().max()) <= 1.0


def test_policies_trace_with_fx_and_the_sampling_loop_has_no_random_op(built):
    random_ops = {torch.randn, torch.rand, torch.randn_like, torch.rand_like, torch.normal}
    for name in FAST:
        gm = fx.symbolic_trace(built[name])
        inputs = zoo.example_inputs(name, batch=2)
        assert torch.equal(_run(gm, inputs), _run(built[name], inputs))
        assert not [n for n in gm.graph.nodes if n.target in random_ops]
        assert [n.name for n in gm.graph.nodes if n.op == "placeholder"] == \
            list(zoo.input_names(name))
    rdt_graph = fx.symbolic_trace(built["rdt_policy_tiny"]).graph
    # every denoising step is in the one graph: each step calls the whole block stack
    calls = [n for n in rdt_graph.nodes if n.op == "call_module" and n.target == "final.fc"]
    assert len(calls) == rdt.TINY.steps


def test_ddim_schedule_ends_on_the_clean_prediction():
    steps = rdt.ddim_schedule(5)
    assert [t for t, _, _ in steps] == [800, 600, 400, 200, 0]
    t, a, b = steps[-1]
    assert a == 0.0 and b == 1.0  # x_prev = x0_hat at the last step
    assert all(0.0 < a < 1.0 for _, a, _ in steps[:-1])
    with pytest.raises(ValueError, match="steps must be in"):
        rdt.ddim_schedule(0)


def test_building_leaves_the_global_rng_alone_and_the_seed_decides():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = zoo.build_policy("decision_transformer", seed=1)
    assert torch.equal(torch.rand(3), expected)
    b = zoo.build_policy("decision_transformer", seed=1)
    c = zoo.build_policy("decision_transformer", seed=2)
    wa, wb, wc = (m.embed_state.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


@pytest.mark.parametrize("name", ["decision_transformer", "rdt_policy_tiny"])
def test_protect_takes_a_policy_with_its_inputs_and_boxes(name):
    from save_ros import protect

    model = zoo.build_policy(name)
    inputs = zoo.example_inputs(name, batch=1)
    clean = _run(zoo.build_policy(name), inputs)
    pm = protect(model, inputs, zoo.input_boxes(name))
    try:
        result = pm.infer(inputs)
        assert result.status.verified and torch.equal(result.output, clean)
    finally:
        pm.close()


@pytest.mark.slow  # builds the ~415M-parameter model on the CPU (1.7 GB fp32) and runs it
def test_full_rdt_policy_runs_in_bf16_and_repeats_bit_exactly():
    model = zoo.build_policy("rdt_policy", dtype=torch.bfloat16)
    inputs = zoo.example_inputs("rdt_policy", batch=1, dtype=torch.bfloat16)
    first = _run(model, inputs)
    assert tuple(first.shape) == (1, 64, 14) and first.dtype == torch.bfloat16
    assert torch.equal(_run(model, inputs), first)


def test_bench_policies_reports_counts_and_bit_exact_repeats(tmp_path, capsys):
    import json

    from save_ros import cli

    out = tmp_path / "p.json"
    assert cli.main(["bench", "policies", "--models", "rdt_policy_tiny", "--dtypes",
                     "fp32,bf16", "--reps", "1", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["models"]["rdt_policy_tiny"]
    assert row["parameters"] == policies.parameter_count("rdt_policy_tiny")
    assert all(d["repeat_bit_exact"] and d["output_shape"] == [1, 64, 14]
               for d in row["dtypes"].values())
    assert cli.main(["bench", "policies", "--models", "cogact"]) == 2
    assert "unknown cogact" in capsys.readouterr().err
