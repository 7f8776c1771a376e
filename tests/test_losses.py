"""The chunked divergences must match a plain full-softmax reference, on values and on gradients.

The reference below materialises both models' `[N, V]` logits and writes each divergence from its definition in
probability space, independently of `trl_rubric.losses` and of TRL's kernels.
"""

import math

import pytest
import torch

from trl_rubric.losses import (
    TokenDivergence,
    clip_token_divergence,
    finite_token_mask,
    generalized_jsd,
    reduce_token_loss,
    sanitize_hidden,
    skip_first_tokens_mask,
    thinking_mask,
    token_divergence,
)

ATOL = 1e-4


# ---------------------------------------------------------------------------------------------------------------------
# Naive reference
# ---------------------------------------------------------------------------------------------------------------------


def ref_logps(hidden, weight, bias, temperature=1.0, scale=1.0, softcap=None):
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    logits = logits * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return torch.log_softmax(logits / temperature, dim=-1)


def ref_kl(log_p, log_q):
    # KL(p‖q) = sum p (log p - log q)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def ref_beta_divergence(s_logps, t_logps, beta):
    # beta = 0: KL(teacher‖student); beta = 1: KL(student‖teacher);
    # else beta KL(teacher‖m) + (1 - beta) KL(student‖m) with m = (1 - beta) p_s + beta p_t
    if beta == 0:
        return ref_kl(t_logps, s_logps)
    if beta == 1:
        return ref_kl(s_logps, t_logps)
    log_m = torch.log((1 - beta) * s_logps.exp() + beta * t_logps.exp())
    return beta * ref_kl(t_logps, log_m) + (1 - beta) * ref_kl(s_logps, log_m)


def ref_topk(s_logps, t_logps, k, source, tail):
    ids = (t_logps if source == "teacher" else s_logps).detach().topk(k, dim=-1).indices
    s_k, t_k = s_logps.gather(-1, ids), t_logps.gather(-1, ids)
    if tail:
        s_k = torch.cat([s_k, torch.log(1 - s_k.exp().sum(-1, keepdim=True))], -1)
        t_k = torch.cat([t_k, torch.log(1 - t_k.exp().sum(-1, keepdim=True))], -1)
    else:
        s_k = torch.log(s_k.exp() / s_k.exp().sum(-1, keepdim=True))
        t_k = torch.log(t_k.exp() / t_k.exp().sum(-1, keepdim=True))
    return s_k, t_k


def make_inputs(n, v, h, bias=True, seed=0, h_t=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h_t = h_t or h
    student = {
        "hidden": torch.randn(n, h, generator=g),
        "weight": torch.randn(v, h, generator=g) / math.sqrt(h),
        "bias": torch.randn(v, generator=g) * 0.1 if bias else None,
    }
    teacher = {
        "hidden": torch.randn(n, h_t, generator=g),
        "weight": torch.randn(v, h_t, generator=g) / math.sqrt(h_t),
        "bias": torch.randn(v, generator=g) * 0.1 if bias else None,
    }
    # Push logits to a realistic spread (a few nats)
    student["hidden"] *= 3.0
    teacher["hidden"] *= 3.0
    student = {k: (t.to(dtype).requires_grad_() if t is not None else None) for k, t in student.items()}
    teacher = {k: (t.to(dtype) if t is not None else None) for k, t in teacher.items()}
    targets = torch.randint(0, v, (n,), generator=g)
    upstream = torch.rand(n, generator=g) + 0.5  # a per-token weighting, so the gradient test is not just a sum
    return student, teacher, targets, upstream


def fast(student, teacher, **kwargs):
    return token_divergence(
        student["hidden"],
        student["weight"],
        student["bias"],
        teacher["hidden"],
        teacher["weight"],
        teacher["bias"],
        **kwargs,
    )


def student_grads(student, value):
    params = [t for t in student.values() if t is not None]
    return torch.autograd.grad(value, params)


def assert_close_grads(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# The math
# ---------------------------------------------------------------------------------------------------------------------


def test_beta_convention_zero_is_forward_kl_one_is_reverse_kl():
    p_s, p_t = [0.7, 0.2, 0.1], [0.2, 0.5, 0.3]
    m = [0.5 * s + 0.5 * t for s, t in zip(p_s, p_t, strict=True)]

    def kl(p, q):
        return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))

    log_s, log_t = torch.tensor(p_s).log(), torch.tensor(p_t).log()
    assert generalized_jsd(log_s, log_t, 0.0).item() == pytest.approx(kl(p_t, p_s), abs=1e-6)
    assert generalized_jsd(log_s, log_t, 1.0).item() == pytest.approx(kl(p_s, p_t), abs=1e-6)
    assert generalized_jsd(log_s, log_t, 0.5).item() == pytest.approx(0.5 * kl(p_t, m) + 0.5 * kl(p_s, m), abs=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_generalized_jsd_tends_to_the_kls_at_the_ends_and_matches_reference(beta):
    g = torch.Generator().manual_seed(1)
    s = torch.log_softmax(torch.randn(7, 11, generator=g), -1)
    t = torch.log_softmax(torch.randn(7, 11, generator=g), -1)
    torch.testing.assert_close(generalized_jsd(s, t, beta), ref_beta_divergence(s, t, beta), atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# support="full"
# ---------------------------------------------------------------------------------------------------------------------

FULL_SHAPES = [
    # (N, V, H_s, H_t, bias, chunk_size): N not a multiple of chunk_size, V not a power of two
    (300, 1000, 16, 16, True, 128),
    (77, 2999, 24, 12, False, 32),
]


@pytest.mark.parametrize("shape", FULL_SHAPES, ids=lambda s: f"N{s[0]}-V{s[1]}-bias{s[4]}")
# 0.3 as well: at 0.5 the JSD is symmetric, so only an asymmetric beta pins which side the mixture weights
@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_full_support_matches_naive_reference_on_values_and_gradients(shape, beta):
    n, v, h_s, h_t, bias, chunk = shape
    student, teacher, targets, upstream = make_inputs(n, v, h_s, bias=bias, h_t=h_t)

    out = fast(student, teacher, beta=beta, chunk_size=chunk, target_ids=targets)
    s_logps = ref_logps(student["hidden"], student["weight"], student["bias"])
    t_logps = ref_logps(teacher["hidden"], teacher["weight"], teacher["bias"])
    want = ref_beta_divergence(s_logps, t_logps, beta)

    assert isinstance(out, TokenDivergence) and out.divergence.shape == (n,)
    assert bool(out.finite.all())
    torch.testing.assert_close(out.divergence, want, atol=ATOL, rtol=1e-4)
    assert want.mean() > 0.05  # the distributions really differ, so the comparison means something
    assert_close_grads(
        student_grads(student, (out.divergence * upstream).sum()), student_grads(student, (want * upstream).sum())
    )
    # Side outputs
    torch.testing.assert_close(
        out.student_logps, s_logps.gather(-1, targets[:, None])[:, 0].detach(), atol=ATOL, rtol=0
    )
    torch.testing.assert_close(out.teacher_logps, t_logps.gather(-1, targets[:, None])[:, 0], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.entropy, -(s_logps.exp() * s_logps).sum(-1).detach(), atol=ATOL, rtol=1e-4)
    assert not out.entropy.requires_grad and not out.student_logps.requires_grad


def test_full_support_chunk_size_does_not_change_the_result():
    student, teacher, _, upstream = make_inputs(130, 1000, 16)
    a = fast(student, teacher, chunk_size=128).divergence
    b = fast(student, teacher, chunk_size=None).divergence
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert_close_grads(student_grads(student, (a * upstream).sum()), student_grads(student, (b * upstream).sum()))


@pytest.mark.parametrize("support", ["full", "topk"])
def test_no_n_by_v_tensor_is_kept_for_backward(support):
    # Everything saved for backward together must stay well below one [N, V] fp32 tensor
    n, v, chunk = 256, 2000, 32
    student, teacher, _, _ = make_inputs(n, v, 16)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fast(student, teacher, support=support, chunk_size=chunk, top_k=8)
    out.divergence.sum().backward()
    assert max(saved) < n * v / 4
    # Distinct tensors: the LM heads are shared by all chunks; each chunk adds a few rows only
    assert sum(saved) < 2 * n * v


def test_bf16_lm_head_gradient_is_summed_over_chunks_in_fp32():
    # One kernel call accumulates its LM-head gradient in fp32 and rounds once; summing 13 chunks' bf16 gradients in
    # bf16 would drift ~5e-3 away from that (measured), fp32 accumulation stays ~3e-5 away
    student, teacher, _, upstream = make_inputs(200, 1000, 16, bias=False)

    def lm_head_grad(chunk_size):
        w16 = student["weight"].detach().to(torch.bfloat16).requires_grad_()
        out = token_divergence(
            student["hidden"].detach(), w16, None, teacher["hidden"], teacher["weight"], None, chunk_size=chunk_size
        )
        (grad,) = torch.autograd.grad((out.divergence * upstream).sum(), w16)
        return grad

    chunked, single = lm_head_grad(16), lm_head_grad(None)
    assert chunked.dtype == torch.bfloat16
    assert (chunked.float() - single.float()).norm() / single.float().norm() < 5e-4


# ---------------------------------------------------------------------------------------------------------------------
# Clipping
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["clamp", "scale"])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_clipped_full_divergence_matches_clipped_reference(mode, beta):
    student, teacher, _, upstream = make_inputs(150, 1500, 16)
    out = fast(student, teacher, beta=beta, chunk_size=64)
    want = ref_beta_divergence(
        ref_logps(student["hidden"], student["weight"], student["bias"]),
        ref_logps(teacher["hidden"], teacher["weight"], teacher["bias"]),
        beta,
    )
    tau = want.median().item()  # half the tokens get clipped
    got, got_mask = clip_token_divergence(out.divergence, tau, mode)
    want_mask = want.detach() > tau
    if mode == "clamp":
        want_clipped = torch.where(want_mask, torch.full_like(want, tau), want)
    else:
        want_clipped = torch.where(want_mask, want * (tau / want.detach()), want)
    assert torch.equal(got_mask, want_mask) and 0 < int(got_mask.sum()) < len(got_mask)
    torch.testing.assert_close(got, want_clipped, atol=ATOL, rtol=1e-4)
    assert_close_grads(
        student_grads(student, (got * upstream).sum()), student_grads(student, (want_clipped * upstream).sum())
    )


def test_clamp_gives_clipped_tokens_no_gradient_and_scale_keeps_bounded_gradient():
    x = torch.tensor([0.01, 0.2, 1.0], requires_grad=True)
    clamped, mask = clip_token_divergence(x, 0.05, "clamp")
    assert mask.tolist() == [False, True, True]
    assert clamped.tolist() == pytest.approx([0.01, 0.05, 0.05])
    (g,) = torch.autograd.grad(clamped.sum(), x)
    assert g.tolist() == [1.0, 0.0, 0.0]
    scaled, _ = clip_token_divergence(x, 0.05, "scale")
    assert scaled.tolist() == pytest.approx([0.01, 0.05, 0.05])
    (g,) = torch.autograd.grad(scaled.sum(), x)
    assert g.tolist() == pytest.approx([1.0, 0.25, 0.05])


def test_clip_with_tau_none_is_identity_and_bad_tau_or_mode_raise():
    x = torch.rand(5)
    same, mask = clip_token_divergence(x, None)
    assert same is x and not mask.any()
    with pytest.raises(ValueError, match="positive"):
        clip_token_divergence(x, 0.0)
    with pytest.raises(ValueError, match="mode"):
        clip_token_divergence(x, 0.1, "bogus")


# ---------------------------------------------------------------------------------------------------------------------
# support="topk"
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["teacher", "student"])
@pytest.mark.parametrize("tail", [True, False])
@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_topk_support_matches_naive_reference(source, tail, beta):
    student, teacher, targets, upstream = make_inputs(101, 1200, 16)
    out = fast(
        student,
        teacher,
        support="topk",
        top_k=20,
        top_k_source=source,
        top_k_tail=tail,
        beta=beta,
        chunk_size=32,
        target_ids=targets,
    )
    s_logps = ref_logps(student["hidden"], student["weight"], student["bias"])
    t_logps = ref_logps(teacher["hidden"], teacher["weight"], teacher["bias"])
    want = ref_beta_divergence(*ref_topk(s_logps, t_logps, 20, source, tail), beta)
    torch.testing.assert_close(out.divergence, want, atol=ATOL, rtol=1e-4)
    assert want.mean() > 0.01
    assert_close_grads(
        student_grads(student, (out.divergence * upstream).sum()), student_grads(student, (want * upstream).sum())
    )
    torch.testing.assert_close(out.entropy, -(s_logps.exp() * s_logps).sum(-1).detach(), atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(out.teacher_logps, t_logps.gather(-1, targets[:, None])[:, 0], atol=ATOL, rtol=0)


def test_topk_with_tail_over_the_whole_vocabulary_equals_full_divergence():
    student, teacher, _, _ = make_inputs(40, 300, 8)
    full = fast(student, teacher, beta=0.5).divergence
    topk = fast(student, teacher, beta=0.5, support="topk", top_k=300).divergence
    torch.testing.assert_close(topk, full, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# Per-vocabulary-entry clip (OPSD)
# ---------------------------------------------------------------------------------------------------------------------


def ref_entry_clipped(s_logps, t_logps, beta, tau):
    # Each entry's term of the divergence, written in probability space, clipped at tau, then summed
    p_s, p_t = s_logps.exp(), t_logps.exp()
    if beta == 0:
        terms = p_t * torch.log(p_t / p_s)
    elif beta == 1:
        terms = p_s * torch.log(p_s / p_t)
    else:
        m = (1 - beta) * p_s + beta * p_t
        terms = beta * p_t * torch.log(p_t / m) + (1 - beta) * p_s * torch.log(p_s / m)
    return torch.minimum(terms, torch.full_like(terms, tau)).sum(-1)


ENTRY_CASES = [  # (N, V, H, bias, chunk_size)
    (97, 1100, 16, True, 32),
    (33, 517, 8, False, None),
    (64, 300, 24, True, 7),
]


@pytest.mark.parametrize("shape", ENTRY_CASES)
@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_entry_clip_full_support_matches_reference(shape, beta):
    n, v, h, bias, chunk = shape
    student, teacher, _, upstream = make_inputs(n, v, h, bias=bias, seed=n)
    tau = 0.01
    out = fast(student, teacher, beta=beta, chunk_size=chunk, entry_clip=tau)
    s_logps = ref_logps(student["hidden"], student["weight"], student["bias"])
    t_logps = ref_logps(teacher["hidden"], teacher["weight"], teacher["bias"])
    want = ref_entry_clipped(s_logps, t_logps, beta, tau)
    torch.testing.assert_close(out.divergence, want, atol=ATOL, rtol=1e-4)
    # The clip is active: it lowers the value below the unclipped divergence, by a margin the test can see
    assert (ref_beta_divergence(s_logps, t_logps, beta) - want).mean() > 0.05
    assert_close_grads(
        student_grads(student, (out.divergence * upstream).sum()), student_grads(student, (want * upstream).sum())
    )


@pytest.mark.parametrize("source", ["teacher", "student"])
@pytest.mark.parametrize("tail", [True, False])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_entry_clip_topk_support_matches_reference(source, tail, beta):
    student, teacher, _, upstream = make_inputs(90, 800, 16, seed=3)
    tau = 0.02
    out = fast(
        student, teacher, support="topk", top_k=10, top_k_source=source, top_k_tail=tail, beta=beta, chunk_size=25,
        entry_clip=tau,
    )  # fmt: skip
    s_logps = ref_logps(student["hidden"], student["weight"], student["bias"])
    t_logps = ref_logps(teacher["hidden"], teacher["weight"], teacher["bias"])
    s_k, t_k = ref_topk(s_logps, t_logps, 10, source, tail)
    want = ref_entry_clipped(s_k, t_k, beta, tau)
    torch.testing.assert_close(out.divergence, want, atol=ATOL, rtol=1e-4)
    assert (ref_beta_divergence(s_k, t_k, beta) - want).mean() > 0.01
    assert_close_grads(
        student_grads(student, (out.divergence * upstream).sum()), student_grads(student, (want * upstream).sum())
    )


def test_entry_clip_lets_a_token_loss_go_negative_and_a_large_tau_changes_nothing():
    student, teacher, _, _ = make_inputs(200, 500, 16, seed=1)
    clipped = fast(student, teacher, beta=0.0, entry_clip=1e-3).divergence
    assert (clipped < 0).any(), "with a small tau the negative entries win on some tokens"
    unclipped = fast(student, teacher, beta=0.0).divergence
    loose = fast(student, teacher, beta=0.0, entry_clip=1e3).divergence
    torch.testing.assert_close(loose, unclipped, atol=1e-5, rtol=1e-5)
    assert (unclipped >= -1e-6).all()


@pytest.mark.parametrize("support", ["full", "topk"])
def test_one_autograd_node_and_one_head_gradient_for_all_chunks(support):
    # Every token chunk folds into one function, so the LM head gets one gradient (one fp32 buffer), not one per chunk
    student, teacher, _, _ = make_inputs(300, 400, 8)
    out = fast(student, teacher, support=support, top_k=5, chunk_size=16)
    seen, stack, nodes = set(), [out.divergence.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        nodes.append(type(node).__name__)
        stack.extend(fn for fn, _ in node.next_functions)
    assert sum("ChunkedHeadDivergence" in name for name in nodes) == 1
    assert nodes.count("AccumulateGrad") == 3  # hidden, weight, bias: each reached once


# ---------------------------------------------------------------------------------------------------------------------
# support="sampled_token"
# ---------------------------------------------------------------------------------------------------------------------


def test_sampled_token_value_is_log_ratio_and_gradient_is_score_function_surrogate():
    student, teacher, targets, upstream = make_inputs(150, 1000, 16)
    out = fast(student, teacher, support="sampled_token", beta=1.0, target_ids=targets, chunk_size=64)
    s_lp = ref_logps(student["hidden"], student["weight"], student["bias"]).gather(-1, targets[:, None])[:, 0]
    t_lp = ref_logps(teacher["hidden"], teacher["weight"], teacher["bias"]).gather(-1, targets[:, None])[:, 0]
    torch.testing.assert_close(out.divergence, (s_lp - t_lp).detach(), atol=ATOL, rtol=1e-4)
    surrogate = ((s_lp - t_lp).detach() * s_lp * upstream).sum()
    assert_close_grads(student_grads(student, (out.divergence * upstream).sum()), student_grads(student, surrogate))
    torch.testing.assert_close(out.student_logps, s_lp.detach(), atol=ATOL, rtol=0)


def test_sampled_token_estimate_and_gradient_are_unbiased_for_reverse_kl():
    # Enumerate every possible sampled token y for one position and weight by p_s(y): the expectation must equal the
    # exact reverse KL, and the expected surrogate gradient its exact gradient
    v = 50
    student, teacher, _, _ = make_inputs(1, v, 8, seed=3)
    rep = {k: (t.expand(v, -1) if k == "hidden" else t) for k, t in student.items()}
    rep_t = {k: (t.expand(v, -1) if k == "hidden" else t) for k, t in teacher.items()}
    ys = torch.arange(v)
    out = token_divergence(
        rep["hidden"], rep["weight"], rep["bias"], rep_t["hidden"], rep_t["weight"], rep_t["bias"],
        support="sampled_token", beta=1.0, target_ids=ys,
    )  # fmt: skip
    p_s = out.student_logps.exp()
    exact = fast(student, teacher, beta=1.0).divergence
    assert (p_s * out.divergence).sum().item() == pytest.approx(exact.item(), abs=1e-5)
    assert_close_grads(student_grads(student, (p_s * out.divergence).sum()), student_grads(student, exact.sum()))


def test_sampled_token_needs_targets_and_warns_once_when_beta_is_not_one(caplog):
    student, teacher, targets, _ = make_inputs(8, 100, 8)
    with pytest.raises(ValueError, match="target_ids"):
        fast(student, teacher, support="sampled_token", beta=1.0)
    from trl_rubric.losses import head_divergence

    head_divergence._warned_sampled_token_beta = False
    with caplog.at_level("WARNING", logger="trl_rubric.losses"):
        fast(student, teacher, support="sampled_token", beta=0.5, target_ids=targets)
        fast(student, teacher, support="sampled_token", beta=0.5, target_ids=targets)
    assert sum("reverse KL" in r.message for r in caplog.records) == 1


# ---------------------------------------------------------------------------------------------------------------------
# All supports
# ---------------------------------------------------------------------------------------------------------------------

SUPPORT_CASES = [
    ("full", 0.0),
    ("full", 0.5),
    ("full", 1.0),
    ("topk", 0.5),
    ("sampled_token", 1.0),
]


@pytest.mark.parametrize(("support", "beta"), SUPPORT_CASES)
def test_teacher_equal_to_student_gives_zero_divergence_and_zero_gradient(support, beta):
    student, _, targets, upstream = make_inputs(90, 800, 16)
    teacher = {k: (t.detach().clone() if t is not None else None) for k, t in student.items()}
    out = fast(student, teacher, support=support, beta=beta, target_ids=targets, chunk_size=32)
    torch.testing.assert_close(out.divergence, torch.zeros(90), atol=1e-5, rtol=0)
    for g in student_grads(student, (out.divergence * upstream).sum()):
        assert g.abs().max() < 1e-5


@pytest.mark.parametrize("support", ["full", "topk", "sampled_token"])
def test_logit_scale_softcap_and_temperature_pass_through_to_every_support(support):
    student, teacher, targets, upstream = make_inputs(60, 700, 16)
    kw = {"temperature": 0.7, "student_logit_scale": 0.5, "teacher_logit_scale": 2.0}
    caps = {"student_final_logit_softcapping": 3.0, "teacher_final_logit_softcapping": 4.0}
    out = fast(student, teacher, support=support, beta=1.0, target_ids=targets, top_k=10, chunk_size=16, **kw, **caps)
    s_logps = ref_logps(student["hidden"], student["weight"], student["bias"], 0.7, 0.5, 3.0)
    t_logps = ref_logps(teacher["hidden"], teacher["weight"], teacher["bias"], 0.7, 2.0, 4.0)
    if support == "full":
        want = ref_beta_divergence(s_logps, t_logps, 1.0)
    elif support == "topk":
        want = ref_beta_divergence(*ref_topk(s_logps, t_logps, 10, "teacher", True), 1.0)
    else:
        s_lp, t_lp = s_logps.gather(-1, targets[:, None])[:, 0], t_logps.gather(-1, targets[:, None])[:, 0]
        want = (s_lp - t_lp).detach() + (s_lp - t_lp).detach() * (s_lp - s_lp.detach())
    torch.testing.assert_close(out.divergence, want, atol=ATOL, rtol=1e-4)
    assert_close_grads(
        student_grads(student, (out.divergence * upstream).sum()), student_grads(student, (want * upstream).sum())
    )


@pytest.mark.parametrize("beta", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("entry_clip", [None, 0.01])
def test_full_support_gradient_through_scale_softcap_and_temperature_for_every_beta(beta, entry_clip):
    # The full support's gradient is written out by hand, chain rule through the logit transform included
    student, teacher, _, upstream = make_inputs(50, 600, 16, seed=7)
    kw = {"temperature": 0.8, "student_logit_scale": 1.5, "teacher_logit_scale": 0.7}
    caps = {"student_final_logit_softcapping": 5.0, "teacher_final_logit_softcapping": None}
    out = fast(student, teacher, beta=beta, chunk_size=16, entry_clip=entry_clip, **kw, **caps)
    s_logps = ref_logps(student["hidden"], student["weight"], student["bias"], 0.8, 1.5, 5.0)
    t_logps = ref_logps(teacher["hidden"], teacher["weight"], teacher["bias"], 0.8, 0.7, None)
    if entry_clip is None:
        want = ref_beta_divergence(s_logps, t_logps, beta)
    else:
        want = ref_entry_clipped(s_logps, t_logps, beta, entry_clip)
    torch.testing.assert_close(out.divergence, want, atol=ATOL, rtol=1e-4)
    assert_close_grads(
        student_grads(student, (out.divergence * upstream).sum()), student_grads(student, (want * upstream).sum())
    )


@pytest.mark.parametrize(("support", "beta"), [("full", 0.5), ("topk", 0.5), ("sampled_token", 1.0)])
def test_non_finite_teacher_rows_are_masked_and_the_rest_match_reference(support, beta):
    n = 70
    student, teacher, targets, upstream = make_inputs(n, 900, 16)
    bad = torch.tensor([3, 40, 69])
    teacher["hidden"][3, 0] = float("nan")
    teacher["hidden"][40, 5] = float("inf")
    teacher["hidden"][69] = float("-inf")
    out = fast(student, teacher, support=support, beta=beta, target_ids=targets, chunk_size=32, top_k=8)

    good = torch.ones(n, dtype=torch.bool)
    good[bad] = False
    assert torch.equal(out.finite, good)
    assert torch.equal(out.divergence[bad], torch.zeros(3))
    s_logps = ref_logps(student["hidden"], student["weight"], student["bias"])
    t_logps = ref_logps(teacher["hidden"][good], teacher["weight"], teacher["bias"])
    if support == "full":
        want = ref_beta_divergence(s_logps[good], t_logps, beta)
    elif support == "topk":
        want = ref_beta_divergence(*ref_topk(s_logps[good], t_logps, 8, "teacher", True), beta)
    else:
        s_lp = s_logps[good].gather(-1, targets[good, None])[:, 0]
        t_lp = t_logps.gather(-1, targets[good, None])[:, 0]
        want = (s_lp - t_lp).detach() + (s_lp - t_lp).detach() * (s_lp - s_lp.detach())
    torch.testing.assert_close(out.divergence[good], want, atol=ATOL, rtol=1e-4)
    got_grads = student_grads(student, (out.divergence * upstream).sum())
    assert all(bool(g.isfinite().all()) for g in got_grads)
    assert_close_grads(got_grads, student_grads(student, (want * upstream[good]).sum()))


def test_finite_token_mask_and_sanitize_hidden():
    a = torch.tensor([0.0, float("nan"), 1.0, 2.0])
    b = torch.tensor([[1.0, 1.0], [1.0, 1.0], [float("inf"), 0.0], [0.0, 0.0]])
    assert finite_token_mask(a, None, b).tolist() == [True, False, False, True]
    per_bt = torch.tensor([[0.0, float("nan")], [1.0, 1.0]])
    assert finite_token_mask(per_bt, token_dims=2).tolist() == [[True, False], [True, True]]
    h = b.clone().requires_grad_()
    clean, rows = sanitize_hidden(h)
    assert rows.tolist() == [True, True, False, True]
    assert torch.equal(clean[2], torch.zeros(2))
    (g,) = torch.autograd.grad(clean.sum(), h)
    assert g[2].tolist() == [0.0, 0.0] and g[0].tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beta": 1.5}, "beta"),
        ({"support": "dense"}, "support"),
        ({"support": "topk", "top_k": 0}, "top_k"),
        ({"support": "topk", "top_k_source": "judge"}, "top_k_source"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"entry_clip": 0.0}, "entry_clip"),
        (
            {"entry_clip": 0.05, "support": "sampled_token", "target_ids": torch.zeros(4, dtype=torch.long)},
            "entry_clip",
        ),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    student, teacher, _, _ = make_inputs(4, 50, 8)
    with pytest.raises(ValueError, match=match):
        fast(student, teacher, **kwargs)


def test_mismatched_token_counts_raise():
    student, teacher, _, _ = make_inputs(4, 50, 8)
    teacher["hidden"] = teacher["hidden"][:3]
    with pytest.raises(ValueError, match="same completion tokens"):
        fast(student, teacher)


# ---------------------------------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------------------------------

S, E = 7, 8  # single-token <think>, </think>


def test_thinking_mask_excludes_block_with_its_delimiters():
    ids = torch.tensor([[1, S, 2, 3, E, 4, 5]])
    assert thinking_mask(ids, [S], [E]).tolist() == [[True, False, False, False, False, True, True]]


def test_thinking_mask_handles_multi_token_delimiters_and_multiple_blocks():
    start, end = [20, 21], [22, 21]
    ids = torch.tensor([[1, 20, 21, 5, 22, 21, 2, 20, 21, 22, 21, 3], [20, 1, 21, 22, 2, 3, 4, 5, 6, 7, 8, 9]])
    got = thinking_mask(ids, start, end)
    assert got[0].tolist() == [True] + [False] * 5 + [True] + [False] * 4 + [True]
    # Partial delimiters are ordinary tokens
    assert got[1].all()


def test_thinking_mask_masks_an_unterminated_block_to_the_end():
    ids = torch.tensor([[1, 2, S, 3, 4], [S, E, 1, S, 2]])
    assert thinking_mask(ids, [S], [E]).tolist() == [
        [True, True, False, False, False],
        [False, False, True, False, False],
    ]


def test_thinking_mask_ignores_stray_end_unless_block_opened_in_prompt():
    ids = torch.tensor([[1, 2, E, 3]])
    assert thinking_mask(ids, [S], [E]).all()
    assert thinking_mask(ids, [S], [E], open_at_start=True).tolist() == [[False, False, False, True]]


def test_thinking_mask_end_delimiter_cannot_overlap_start_delimiter():
    # "<a b>" start and "b>" end share a token: the block must not close inside its own opening delimiter
    ids = torch.tensor([[1, 30, 31, 2, 31, 3]])
    assert thinking_mask(ids, [30, 31], [31]).tolist() == [[True, False, False, False, False, True]]


def test_thinking_mask_rejects_empty_delimiters():
    with pytest.raises(ValueError, match="start_ids"):
        thinking_mask(torch.tensor([[1, 2]]), [], [E])


def test_skip_first_tokens_mask_drops_leading_tokens_only():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert skip_first_tokens_mask(mask, 2).tolist() == [[0, 0, 1, 0], [0, 0, 1, 1]]
    bool_mask = mask.bool()
    assert skip_first_tokens_mask(bool_mask, 0) is bool_mask
    assert skip_first_tokens_mask(bool_mask, 1).dtype == torch.bool
    with pytest.raises(ValueError, match="num_loss_tokens_to_skip"):
        skip_first_tokens_mask(mask, -1)


# ---------------------------------------------------------------------------------------------------------------------
# Reduction
# ---------------------------------------------------------------------------------------------------------------------

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])  # row 0: 1 + 2 over 2 tokens; row 1: 4 over 1 token


@pytest.mark.parametrize(
    ("loss_type", "kwargs", "expected"),
    [
        ("grpo", {}, (1.5 + 4.0) / 2),
        ("bnpo", {}, 7.0 / 3),
        ("dr_grpo", {"max_completion_length": 5}, 7.0 / (2 * 5)),
        ("luspo", {}, (3.0 + 4.0) / 2),
        ("grpo", {"gradient_accumulation_steps": 4}, (1.5 + 4.0) / 2 / 4),
        ("bnpo", {"gradient_accumulation_steps": 2}, 7.0 / 3 / 2),
        # dapo: 12 tokens over 2 processes = 6 per process; 2 accumulation steps out of 4 per generation -> 3
        (
            "dapo",
            {"num_items_in_batch": torch.tensor(12), "num_processes": 2, "gradient_accumulation_steps": 2, "steps_per_generation": 4},
            7.0 / 3,
        ),
        ("dapo", {"num_items_in_batch": 14}, 7.0 / 14),
    ],
)  # fmt: skip
def test_reduce_token_loss_matches_hand_computed_grpo_normalisations(loss_type, kwargs, expected):
    assert reduce_token_loss(LOSS, MASK, loss_type, **kwargs).item() == pytest.approx(expected)
    assert reduce_token_loss(LOSS, MASK.bool(), loss_type, **kwargs).item() == pytest.approx(expected)


def test_reduce_token_loss_rejects_policy_only_and_unknown_types_and_missing_inputs():
    with pytest.raises(ValueError, match="no distillation analogue"):
        reduce_token_loss(LOSS, MASK, "sapo")
    with pytest.raises(ValueError, match="unknown"):
        reduce_token_loss(LOSS, MASK, "mean")
    with pytest.raises(ValueError, match="num_items_in_batch"):
        reduce_token_loss(LOSS, MASK, "dapo")
    with pytest.raises(ValueError, match="max_completion_length"):
        reduce_token_loss(LOSS, MASK, "dr_grpo")


def test_reduce_token_loss_survives_fully_masked_rows():
    # A fully masked row (e.g. all tokens inside <think>) must not divide by zero
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert reduce_token_loss(LOSS, mask, "grpo").item() == pytest.approx(1.5)  # the masked row is not counted
    assert reduce_token_loss(LOSS, torch.zeros_like(mask), "bnpo").item() == 0.0
    for loss_type in ("grpo", "dr_grpo", "luspo"):
        assert reduce_token_loss(LOSS, torch.zeros_like(mask), loss_type, max_completion_length=3).item() == 0.0


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "luspo"])
def test_a_dropped_row_leaves_the_loss_of_the_surviving_rows(loss_type):
    # A row dropped by a failed critique has no loss tokens; the loss is the loss of the surviving rows alone
    torch.manual_seed(0)
    per_token = torch.rand(4, 6, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(4, 6) > 0.3).double()
    mask[:, 0] = 1.0
    dropped = mask.clone()
    dropped[2] = 0.0
    kwargs = dict(num_items_in_batch=dropped.sum(), max_completion_length=6, gradient_accumulation_steps=2)
    loss = reduce_token_loss(per_token, dropped, loss_type, **kwargs)
    keep = torch.tensor([0, 1, 3])
    reference = reduce_token_loss(per_token[keep], mask[keep], loss_type, **kwargs)
    torch.testing.assert_close(loss, reference, rtol=1e-12, atol=0)
    (grad,) = torch.autograd.grad(loss, per_token)
    (reference_grad,) = torch.autograd.grad(reference, per_token)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-12, atol=0)


@pytest.mark.parametrize("support", ["full", "topk", "sampled_token"])
def test_no_tokens_gives_an_empty_divergence_that_still_backpropagates(support):
    # Every token can be masked out (e.g. the whole completion is inside <think>); the loss must still backward
    student, teacher, _, _ = make_inputs(5, 60, 8)
    student["hidden"] = student["hidden"][:0]
    teacher["hidden"] = teacher["hidden"][:0]
    out = fast(student, teacher, support=support, beta=1.0, target_ids=torch.zeros(0, dtype=torch.long), top_k=4)
    assert out.divergence.shape == (0,) and out.finite.shape == (0,)
    out.divergence.sum().backward()
    assert student["weight"].grad is not None and not student["weight"].grad.any()


def test_chunk_size_splits_the_fused_kernel_path_into_calls_of_that_many_tokens(monkeypatch):
    # On CUDA, "full" without an entry clip runs TRL's fused kernel; chunk_size used to be ignored there. Forced here
    # on CPU (TRL's kernel has a torch fallback): one call per chunk, same values and gradients as one call.
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

    from trl_rubric.losses import head_divergence

    monkeypatch.setattr(head_divergence, "_fused_kernel_applies", lambda hidden: True)
    sizes = []
    apply = ChunkedDivergenceFunction.apply

    def spy(hidden, *args):
        sizes.append(hidden.shape[0])
        return apply(hidden, *args)

    monkeypatch.setattr(head_divergence.ChunkedDivergenceFunction, "apply", spy)
    student, teacher, _, upstream = make_inputs(10, 50, 8)
    whole = fast(student, teacher, support="full", beta=0.5, chunk_size=None)
    assert sizes == [10]
    chunked = fast(student, teacher, support="full", beta=0.5, chunk_size=4)
    assert sizes == [10, 4, 4, 2]
    torch.testing.assert_close(chunked.divergence, whole.divergence, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(chunked.entropy, whole.entropy, atol=ATOL, rtol=1e-5)
    assert_close_grads(
        student_grads(student, (chunked.divergence * upstream).sum()),
        student_grads(student, (whole.divergence * upstream).sum()),
    )
