"""Teacher temperature and top-k (`teacher_temperature`, `teacher_top_k`): every support matches a plain reference.

The reference materialises both models' `[N, V]` logits and writes the teacher's tempered or top-k distribution and
each divergence from its definition in probability space, independently of `trl_rubric.losses`.
"""

import math

import pytest
import torch

from trl_rubric.losses import DEFAULT_TEACHER_TOP_K_FLOOR, token_divergence
from trl_rubric.trainers.rgsd_config import RGSDConfig

ATOL = 1e-4
N, V, H = 11, 37, 8


def make_inputs(seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    s_hidden = torch.randn(N, H, generator=g)
    s_weight = torch.randn(V, H, generator=g) / math.sqrt(H) * 2
    s_bias = torch.randn(V, generator=g) * 0.1 if bias else None
    t_hidden = torch.randn(N, H, generator=g)
    t_weight = torch.randn(V, H, generator=g) / math.sqrt(H) * 2
    t_bias = torch.randn(V, generator=g) * 0.1 if bias else None
    targets = torch.randint(0, V, (N,), generator=g)
    return s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, targets


def ref_teacher(t_hidden, t_weight, t_bias, temperature, teacher_temperature, top_k, floor):
    """`(probs, logps)` of the teacher: softmax(z / (T * T_teacher)), optionally kept on its top k and renormalised;
    outside the top k the probability is 0 and the log-probability `floor`."""
    z = (t_hidden @ t_weight.t() + (t_bias if t_bias is not None else 0)) / (temperature * teacher_temperature)
    probs = torch.softmax(z, dim=-1)
    if top_k is None:
        return probs, probs.log()
    kth = torch.sort(z, dim=-1, descending=True).values[:, top_k - 1 : top_k]
    keep = z >= kth
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    kept = kept / kept.sum(-1, keepdim=True)
    return kept, torch.where(keep, kept.log(), torch.full_like(kept, floor))


def ref_divergence(s_logps, t_probs, t_logps, beta):
    s_probs = s_logps.exp()

    def xlogy_ratio(p, log_p, log_q):  # sum_v p (log p - log q), with 0 log 0 = 0
        return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)

    if beta == 0:
        return xlogy_ratio(t_probs, t_logps, s_logps)
    if beta == 1:
        return (s_probs * (s_logps - t_logps)).sum(-1)  # the top-k teacher's log-probs read `floor` outside
    m = (1 - beta) * s_probs + beta * t_probs
    return beta * xlogy_ratio(t_probs, t_logps, m.log()) + (1 - beta) * xlogy_ratio(s_probs, s_logps, m.log())


def run_ours(inputs, **kwargs):
    s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, targets = inputs
    s_hidden = s_hidden.clone().requires_grad_(True)
    s_weight = s_weight.clone().requires_grad_(True)
    out = token_divergence(s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, target_ids=targets, **kwargs)
    (out.divergence * torch.linspace(0.5, 1.5, N)).sum().backward()
    return out, s_hidden.grad, s_weight.grad


def run_reference(inputs, beta, temperature=1.0, teacher_temperature=1.0, top_k=None, floor=-10.0, sampled=False):
    s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, targets = inputs
    s_hidden = s_hidden.clone().requires_grad_(True)
    s_weight = s_weight.clone().requires_grad_(True)
    s_logps = torch.log_softmax((s_hidden @ s_weight.t() + s_bias) / temperature, dim=-1)
    t_probs, t_logps = ref_teacher(t_hidden, t_weight, t_bias, temperature, teacher_temperature, top_k, floor)
    s_target = s_logps.gather(-1, targets[:, None])[:, 0]
    t_target = t_logps.gather(-1, targets[:, None])[:, 0]
    if sampled:
        # The sampled-token reverse-KL estimate: value log p_s - log p_t, gradient (log p_s - log p_t) grad log p_s
        delta = (s_target - t_target).detach()
        divergence = delta + delta * (s_target - s_target.detach())
    else:
        divergence = ref_divergence(s_logps, t_probs, t_logps, beta)
    (divergence * torch.linspace(0.5, 1.5, N)).sum().backward()
    return divergence.detach(), t_target.detach(), s_hidden.grad, s_weight.grad


SETTINGS = [
    pytest.param(dict(teacher_temperature=0.5), id="T0.5"),
    pytest.param(dict(teacher_temperature=2.0), id="T2"),
    pytest.param(dict(teacher_top_k=5), id="k5"),
    pytest.param(dict(teacher_top_k=5, teacher_temperature=0.7, teacher_top_k_floor=-4.0), id="k5-T0.7-floor-4"),
]


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("setting", SETTINGS)
def test_full_support_matches_reference_with_tempered_or_top_k_teacher(beta, setting):
    inputs = make_inputs()
    out, g_hidden, g_weight = run_ours(inputs, beta=beta, support="full", temperature=1.3, chunk_size=4, **setting)
    ref, ref_target, r_hidden, r_weight = run_reference(
        inputs,
        beta,
        temperature=1.3,
        teacher_temperature=setting.get("teacher_temperature", 1.0),
        top_k=setting.get("teacher_top_k"),
        floor=setting.get("teacher_top_k_floor", DEFAULT_TEACHER_TOP_K_FLOOR),
    )
    torch.testing.assert_close(out.divergence.detach(), ref, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(out.teacher_logps, ref_target, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(g_hidden, r_hidden, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(g_weight, r_weight, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("setting", SETTINGS)
def test_sampled_token_estimate_matches_reference_and_reads_the_floor_outside_top_k(setting):
    inputs = make_inputs(seed=1)
    out, g_hidden, g_weight = run_ours(inputs, beta=1.0, support="sampled_token", chunk_size=4, **setting)
    ref, ref_target, r_hidden, r_weight = run_reference(
        inputs,
        1.0,
        teacher_temperature=setting.get("teacher_temperature", 1.0),
        top_k=setting.get("teacher_top_k"),
        floor=setting.get("teacher_top_k_floor", DEFAULT_TEACHER_TOP_K_FLOOR),
        sampled=True,
    )
    torch.testing.assert_close(out.divergence.detach(), ref, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(out.teacher_logps, ref_target, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(g_hidden, r_hidden, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(g_weight, r_weight, atol=ATOL, rtol=1e-4)
    if "teacher_top_k" in setting:
        floor = setting.get("teacher_top_k_floor", DEFAULT_TEACHER_TOP_K_FLOOR)
        outside = out.teacher_logps == floor
        assert 0 < int(outside.sum()) < N, "the seed should sample tokens both inside and outside the top k"
        assert torch.isfinite(out.divergence).all()


@pytest.mark.parametrize("setting", SETTINGS)
def test_topk_support_reads_the_shaped_teacher(setting):
    """On `support="topk"` (teacher's top 8, renormalised) the teacher's support entries come from its shaped
    distribution: renormalising its top-k-5 distribution over a top-8 support keeps the floor entries' tiny mass."""
    inputs = make_inputs(seed=2)
    out, g_hidden, g_weight = run_ours(
        inputs, beta=0.5, support="topk", top_k=8, top_k_tail=False, chunk_size=4, **setting
    )
    s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, targets = inputs
    s_hidden = s_hidden.clone().requires_grad_(True)
    s_weight = s_weight.clone().requires_grad_(True)
    s_logps = torch.log_softmax(s_hidden @ s_weight.t() + s_bias, dim=-1)
    _, t_logps = ref_teacher(
        t_hidden,
        t_weight,
        t_bias,
        1.0,
        setting.get("teacher_temperature", 1.0),
        setting.get("teacher_top_k"),
        setting.get("teacher_top_k_floor", DEFAULT_TEACHER_TOP_K_FLOOR),
    )
    ids = (t_hidden @ t_weight.t() + t_bias).topk(8, dim=-1).indices  # the support: the teacher's raw top 8
    s_k = torch.log_softmax(s_logps.gather(-1, ids), dim=-1)
    t_k = torch.log_softmax(t_logps.gather(-1, ids), dim=-1)
    m = 0.5 * s_k.exp() + 0.5 * t_k.exp()
    ref = 0.5 * (t_k.exp() * (t_k - m.log())).sum(-1) + 0.5 * (s_k.exp() * (s_k - m.log())).sum(-1)
    (ref * torch.linspace(0.5, 1.5, N)).sum().backward()
    torch.testing.assert_close(out.divergence.detach(), ref.detach(), atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(g_hidden, s_hidden.grad, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(g_weight, s_weight.grad, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("support", ["full", "topk", "sampled_token"])
def test_temperature_one_and_no_top_k_reproduce_todays_numbers_exactly(support):
    inputs = make_inputs(seed=3)
    kwargs = dict(beta=0.5 if support != "sampled_token" else 1.0, support=support, chunk_size=4, temperature=0.9)
    today, g_hidden, g_weight = run_ours(inputs, **kwargs)
    same, s_hidden, s_weight = run_ours(inputs, **kwargs, teacher_temperature=1.0, teacher_top_k=None)
    assert torch.equal(today.divergence, same.divergence)
    assert torch.equal(today.teacher_logps, same.teacher_logps)
    assert torch.equal(g_hidden, s_hidden) and torch.equal(g_weight, s_weight)


def test_teacher_temperature_equals_scaling_the_teacher_logits():
    """Without a bias the teacher's logits are linear in its hidden states, so T on the teacher equals hidden / T."""
    inputs = make_inputs(seed=4, bias=False)
    s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, targets = inputs
    tempered = token_divergence(s_hidden, s_weight, None, t_hidden, t_weight, None, teacher_temperature=2.5)
    scaled = token_divergence(s_hidden, s_weight, None, t_hidden / 2.5, t_weight, None)
    torch.testing.assert_close(tempered.divergence, scaled.divergence, atol=1e-5, rtol=1e-5)
    changed = token_divergence(s_hidden, s_weight, None, t_hidden, t_weight, None)
    assert not torch.allclose(changed.divergence, tempered.divergence, atol=1e-3)


def test_top_k_teacher_with_k_equal_vocabulary_is_the_whole_teacher():
    inputs = make_inputs(seed=5)
    whole, *_ = run_ours(inputs, beta=1.0, support="full", chunk_size=4)
    top_v, *_ = run_ours(inputs, beta=1.0, support="full", chunk_size=4, teacher_top_k=V)
    torch.testing.assert_close(whole.divergence, top_v.divergence, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(teacher_temperature=0.0), "teacher_temperature"),
        (dict(teacher_temperature=float("inf")), "teacher_temperature"),
        (dict(teacher_top_k=0), "teacher_top_k"),
        (dict(teacher_top_k=V + 1), "teacher_top_k"),
        (dict(teacher_top_k=True), "teacher_top_k"),
        (dict(teacher_top_k=3, teacher_top_k_floor=float("-inf")), "teacher_top_k_floor"),
    ],
)
def test_bad_teacher_shaping_is_refused_by_the_loss(kwargs, match):
    s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, _ = make_inputs()
    with pytest.raises(ValueError, match=match):
        token_divergence(s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(teacher_temperature=0.0), "teacher_temperature"),
        (dict(teacher_temperature=-1.0), "teacher_temperature"),
        (dict(teacher_top_k=0), "teacher_top_k"),
        (dict(teacher_top_k=2.5), "teacher_top_k"),
        (dict(teacher_top_k=20, teacher_top_k_floor=float("nan")), "teacher_top_k_floor"),
        (dict(teacher_top_k=20, teacher_top_k_floor=1.0), "teacher_top_k_floor"),
    ],
)
def test_bad_teacher_shaping_is_refused_by_the_config(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        RGSDConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, **kwargs)


def test_config_passes_teacher_shaping_to_the_loss(tmp_path):
    from trl_rubric.trainers.teacher_shaping import teacher_shaping_kwargs

    plain = RGSDConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False)
    assert teacher_shaping_kwargs(plain) == {}
    shaped = RGSDConfig(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, teacher_temperature=0.5, teacher_top_k=20
    )
    assert teacher_shaping_kwargs(shaped) == {
        "teacher_temperature": 0.5,
        "teacher_top_k": 20,
        "teacher_top_k_floor": DEFAULT_TEACHER_TOP_K_FLOOR,
    }


@pytest.mark.parametrize("support", ["full", "sampled_token"])
def test_trainer_loss_uses_the_tempered_top_k_teacher(tiny_model_path, tmp_path, monkeypatch, support):
    """On the tiny model the trainer hands teacher_temperature / teacher_top_k to the loss, and the loss it computes is
    the one of the shaped teacher: recomputing it from the same hidden states with the plain reference matches."""
    from datasets import Dataset

    from trl_rubric import losses
    from trl_rubric.testing import make_rubric_rows, rgsd_test_config
    from trl_rubric.trainers.rgsd import RGSDTrainer

    config = rgsd_test_config(
        tmp_path, teacher_temperature=0.5, teacher_top_k=4, distillation_support=support, distillation_beta=1.0
    )
    trainer = RGSDTrainer(tiny_model_path, args=config, train_dataset=Dataset.from_list(make_rubric_rows(4)))
    batch = trainer._generate_and_score_completions(list(Dataset.from_list(make_rubric_rows(4))))
    seen = {}
    real = losses.token_divergence

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.setdefault("calls", []).append((args, kwargs, out))
        return out

    monkeypatch.setattr(losses, "token_divergence", spy)
    loss = trainer._compute_loss(trainer.model, batch)
    assert torch.isfinite(loss)
    args, kwargs, out = seen["calls"][0]
    assert (kwargs["teacher_temperature"], kwargs["teacher_top_k"]) == (0.5, 4)
    s_hidden, s_w, s_b, t_hidden, t_w, t_b = (a.detach() if a is not None else None for a in args)
    t_probs, t_logps = ref_teacher(t_hidden, t_w, t_b, 1.0, 0.5, 4, DEFAULT_TEACHER_TOP_K_FLOOR)
    s_logps = torch.log_softmax(s_hidden @ s_w.T + (0 if s_b is None else s_b), -1)
    targets = kwargs["target_ids"]
    t_target = t_logps.gather(-1, targets[:, None])[:, 0]
    torch.testing.assert_close(out.teacher_logps, t_target, atol=1e-4, rtol=1e-4)
    if support == "full":
        expected = ref_divergence(s_logps, t_probs, t_logps, 1.0)
    else:
        expected = s_logps.gather(-1, targets[:, None])[:, 0] - t_target
    torch.testing.assert_close(out.divergence.detach(), expected, atol=1e-4, rtol=1e-4)


def test_model_card_states_a_shaped_or_criterion_wise_teacher_and_nothing_at_the_defaults(tiny_model_path, tmp_path):
    from datasets import Dataset

    from trl_rubric.model_card import training_facts
    from trl_rubric.testing import make_rubric_rows, rgsd_test_config
    from trl_rubric.trainers.rgsd import RGSDTrainer

    data = Dataset.from_list(make_rubric_rows(4))
    plain = training_facts(RGSDTrainer(tiny_model_path, args=rgsd_test_config(tmp_path / "a"), train_dataset=data))
    assert plain["teacher_context"] is None and plain["teacher_shaping"] is None
    config = rgsd_test_config(
        tmp_path / "b", teacher_context="criteria", num_teacher_contexts=3, teacher_temperature=0.5, teacher_top_k=20
    )
    facts = training_facts(RGSDTrainer(tiny_model_path, args=config, train_dataset=data))
    assert facts["teacher_context"] == (
        "criteria: 3 teachers per rollout, one criterion group each, weighted equal, combined by mean"
    )
    assert facts["teacher_shaping"] == "temperature 0.5, top-20 renormalised (floor -10)"
