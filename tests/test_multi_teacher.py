"""Several teachers per rollout: the combination math against plain loops, and the trainer's K-teacher path."""

import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

from trl_rubric import losses
from trl_rubric.multi_teacher import (
    combine_teachers,
    normalize_teacher_weights,
    sgsd_gate,
    sgsd_token_loss,
    softmax_teacher_weights,
    teacher_polarity,
    verifier_outcome,
    weighted_teacher_average,
)
from trl_rubric.teacher_context import ReferenceContext, RubricContext, TeacherContext
from trl_rubric.testing import make_rubric_rows, rgsd_test_config
from trl_rubric.trainers.rgsd import RGSDConfig, RGSDTrainer

K, N = 3, 11


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    divergence = torch.rand(K, N, generator=g, dtype=torch.float64).requires_grad_(True)
    support = torch.randn(K, N, generator=g, dtype=torch.float64) * 3
    weights = softmax_teacher_weights(torch.randn(N, K, generator=g, dtype=torch.float64)).T
    outcome = torch.tensor([1.0, -1.0, 0.0] * 3 + [1.0, -1.0], dtype=torch.float64)
    return divergence, support, weights, outcome


def _naive_average(divergence, weights):
    return torch.stack([sum(weights[k, n] * divergence[k, n] for k in range(K)) for n in range(N)])


def _published_sgsd(student, teacher, rollout, outcome, weights, tau=1.0, clip=3.0, confidence=0.05):
    """SGSD's objective written out plainly, rollout by rollout and teacher by teacher (arXiv 2605.28791): per token
    log 2 - softplus(-delta^2 / 2 tau), delta = teacher - student sampled-token log-prob, times
    w_k * sign(outcome) * sign(mean of delta clipped to +-clip, 0 when within confidence). Returns [N]."""
    out = [student.new_zeros(()) for _ in range(N)]
    for r in sorted(set(rollout.tolist())):
        tokens = [n for n in range(N) if int(rollout[n]) == r]
        for k in range(K):
            deltas = [teacher[k, n] - student[k, n] for n in tokens]
            score = sum(min(max(float(d), -clip), clip) for d in deltas) / len(deltas)
            sign = 0.0 if abs(score) <= confidence else (1.0 if score > 0 else -1.0)
            o = float(outcome[tokens[0]])
            polarity = sign * (0.0 if o == 0 else (1.0 if o > 0 else -1.0))
            for n, d in zip(tokens, deltas, strict=True):
                out[n] = out[n] + weights[k, n] * polarity * (math.log(2.0) - F.softplus(-(d**2) / (2 * tau)))
    return torch.stack(out)


def _sgsd_inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(K, N, generator=g, dtype=torch.float64) - 2).requires_grad_(True)
    teacher = student.detach() + torch.randn(K, N, generator=g, dtype=torch.float64) * 2
    rollout = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3])
    outcome = torch.tensor([1.0, -1.0, 0.0, 1.0])[rollout].to(torch.float64)
    weights = softmax_teacher_weights(torch.randn(N, K, generator=g, dtype=torch.float64)).T
    return student, teacher, rollout, outcome, weights


def test_weighted_average_matches_a_loop_on_values_and_gradients():
    divergence, _, weights, _ = _inputs()
    fast = weighted_teacher_average(divergence, weights)
    (g_fast,) = torch.autograd.grad(fast.sum(), divergence)
    naive = _naive_average(divergence, weights)
    (g_naive,) = torch.autograd.grad(naive.sum(), divergence)
    torch.testing.assert_close(fast, naive)
    torch.testing.assert_close(g_fast, g_naive)


@pytest.mark.parametrize("tau, clip, confidence", [(1.0, 3.0, 0.05), (0.5, 1.0, 0.8)])
def test_sgsd_gate_is_the_published_objective_on_values_and_gradients(tau, clip, confidence):
    student, teacher, rollout, outcome, weights = _sgsd_inputs()
    upstream = torch.randn(N, dtype=torch.float64)
    # The trainer hands the gate the sampled-token divergence, whose gradient flows through the student's log-prob.
    divergence = losses.sampled_token_reverse_kl(student, teacher)
    fast, active = sgsd_gate(teacher - student.detach(), divergence, rollout, outcome, weights, tau, clip, confidence)
    (g_fast,) = torch.autograd.grad((fast * upstream).sum(), student)
    naive = _published_sgsd(student, teacher, rollout, outcome, weights, tau, clip, confidence)
    (g_naive,) = torch.autograd.grad((naive * upstream).sum(), student)
    torch.testing.assert_close(fast, naive)
    torch.testing.assert_close(g_fast, g_naive)
    assert active[:, outcome == 0].sum() == 0  # an unknown outcome gives no signal
    assert g_fast.abs().sum() > 0
    if confidence > 0.5:
        assert 0 < active.sum() < active[:, outcome != 0].numel()  # the threshold really turns some teachers off


def test_sgsd_token_loss_by_hand():
    # log 2 - softplus(-d^2 / 2 tau): 0 at agreement, log 2 - log(1 + e^-2) at |d| = 2, tau = 1; below log 2 always.
    d = torch.tensor([0.0, 2.0, -2.0, 1.0, 40.0], dtype=torch.float64, requires_grad=True)
    loss = sgsd_token_loss(d, tau=1.0)
    expected = [0.0, math.log(2) - math.log(1 + math.exp(-2)), math.log(2) - math.log(1 + math.exp(-2))]
    expected += [math.log(2) - math.log(1 + math.exp(-0.5)), math.log(2)]
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))
    (grad,) = torch.autograd.grad(loss.sum(), d)
    # d/dd = sigmoid(-d^2 / 2 tau) * d / tau: 0 at agreement, odd in d
    sig = 1 / (1 + math.exp(2))
    torch.testing.assert_close(grad[:3], torch.tensor([0.0, 2 * sig, -2 * sig], dtype=torch.float64))
    torch.testing.assert_close(
        sgsd_token_loss(torch.tensor([1.0]), tau=0.5), torch.tensor([math.log(2) - math.log(1 + math.exp(-1))])
    )


def test_polarity_is_per_rollout_from_the_clipped_mean_and_the_outcome():
    # One teacher, three rollouts. Rollout 0: deltas +10 and -4 -> clipped +3, -3 -> mean 0 -> unsure (unclipped
    # mean +3 would say "helps"). Rollout 1: +0.2, 0.0 -> mean +0.1 > 0.05 -> +1, success -> +1. Rollout 2: mean
    # -0.04 -> within 0.05 -> 0; the 4th: rollout 3, mean -1, failure -> +1 (the teacher lowers a failed answer).
    delta = torch.tensor([[10.0, -4.0, 0.2, 0.0, -0.04, -1.0]])
    rollout = torch.tensor([0, 0, 1, 1, 2, 3])
    outcome = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, -1.0])
    assert teacher_polarity(delta, rollout, outcome).tolist() == [[0.0, 0.0, 1.0, 1.0, 0.0, 1.0]]
    # A successful rollout the teacher finds unlikely: the teacher is wrong, the student is pushed away (-1).
    assert teacher_polarity(torch.tensor([[-1.0]]), torch.tensor([0]), torch.tensor([1.0])).tolist() == [[-1.0]]
    assert teacher_polarity(torch.tensor([[-1.0]]), torch.tensor([0]), torch.tensor([0.0])).tolist() == [[0.0]]


def test_sgsd_gate_pulls_a_right_teacher_closer_and_pushes_a_wrong_one_away():
    student = torch.tensor([[-3.0]], dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor([[-1.0]], dtype=torch.float64)  # the teacher finds the sampled token likelier
    one = torch.ones(1, 1, dtype=torch.float64)
    for outcome, direction in ((1.0, 1.0), (-1.0, -1.0)):
        divergence = losses.sampled_token_reverse_kl(student, teacher)
        loss, _ = sgsd_gate(teacher - student.detach(), divergence, torch.tensor([0]), torch.tensor([outcome]), one)
        (grad,) = torch.autograd.grad(loss.sum(), student)
        # gradient descent moves the student's log-prob by -grad: up (towards the teacher) after a success
        assert torch.sign(-grad).item() == direction
        expected = math.log(2) - math.log(1 + math.exp(-2.0))  # delta = 2, tau = 1
        assert loss.item() == pytest.approx(direction * expected)


def test_verifier_outcome_never_turns_a_failed_judge_into_a_failure():
    rewards = torch.tensor([[0.9, 0.1], [0.2, 0.1], [float("nan"), float("nan")], [float("nan"), 0.6]])
    assert verifier_outcome(rewards, torch.ones(2), 0.5).tolist() == [1.0, -1.0, 0.0, 1.0]


def test_teacher_weights_are_normalised_and_bad_ones_refused():
    torch.testing.assert_close(normalize_teacher_weights(torch.tensor([[1.0, 3.0]])), torch.tensor([[0.25, 0.75]]))
    with pytest.raises(ValueError, match="sum to 0 for rollouts \\[1\\]"):
        normalize_teacher_weights(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="non-negative"):
        normalize_teacher_weights(torch.tensor([[1.0, -1.0]]))


def test_combined_teachers_match_separate_divergence_calls():
    g = torch.Generator().manual_seed(0)
    H, V = 8, 32
    s_hidden = torch.randn(N, H, generator=g, dtype=torch.float64).requires_grad_(True)
    head = torch.randn(V, H, generator=g, dtype=torch.float64)
    t_hidden = torch.randn(K, N, H, generator=g, dtype=torch.float64)
    weights = softmax_teacher_weights(torch.randn(N, K, generator=g, dtype=torch.float64)).T
    targets = torch.randint(0, V, (N,), generator=g)

    out = losses.token_divergence(
        s_hidden.repeat(K, 1), head, None, t_hidden.flatten(0, 1), head, None, target_ids=targets.repeat(K)
    )
    clipped, clipped_mask = losses.clip_token_divergence(out.divergence, 0.5)
    combined = combine_teachers(out, clipped, clipped_mask, weights)
    (g_fast,) = torch.autograd.grad(combined.loss.sum(), s_hidden)

    per_teacher = [
        losses.clip_token_divergence(
            losses.token_divergence(s_hidden, head, None, t_hidden[k], head, None).divergence, 0.5
        )[0]
        for k in range(K)
    ]
    naive = sum(weights[k] * per_teacher[k] for k in range(K))
    (g_naive,) = torch.autograd.grad(naive.sum(), s_hidden)
    torch.testing.assert_close(combined.loss, naive)
    torch.testing.assert_close(g_fast, g_naive)
    assert combined.divergence.finite.all() and combined.divergence.student_logps.shape == (N,)


# ---------------------------------------------------------------- trainer


class TwoTeachers:
    """The rubric teacher and the reference teacher on every rollout, weighted 1 : 3."""

    name, num_contexts, needs_completion = "two", 2, False

    def __init__(self):
        self.rubric, self.reference = RubricContext(), ReferenceContext()

    def validate(self, dataset, name):
        self.reference.validate(dataset, name)

    def contexts(self, row, completion=None):
        return [
            TeacherContext(self.rubric.contexts(row)[0].prompt, 1.0),
            TeacherContext(self.reference.contexts(row)[0].prompt, 3.0),
        ]


def _rows(n=4):
    rows = make_rubric_rows(n, conversational=True)
    for i, row in enumerate(rows):
        row["reference"] = f"reference answer {i}: fever dose"
    return rows


# Shorter than the kit's default run: one step of 6-token completions, no progress bar, no token clipping.
_SHORT_RUN = dict(max_completion_length=6, max_steps=1, disable_tqdm=True, token_clip=None)


def _config(tmp_path, **overrides):
    return rgsd_test_config(tmp_path / "out", **(_SHORT_RUN | overrides))


def _single_teacher_batch(batch, k):
    single = dict(batch)
    single["teacher_prompt_ids"] = batch["teacher_prompt_ids"][:, k]
    single["teacher_prompt_mask"] = batch["teacher_prompt_mask"][:, k]
    return single


def test_k_teachers_average_equals_the_weighted_single_teacher_losses(tiny_model_path, tmp_path):
    dataset = Dataset.from_list(_rows())
    trainer = RGSDTrainer(
        tiny_model_path, args=_config(tmp_path), train_dataset=dataset, teacher_context=TwoTeachers()
    )
    trainer.model.train()
    batch = trainer._generate_and_score_completions(list(dataset))
    assert batch["teacher_prompt_ids"].shape[:2] == (4, 2)
    torch.testing.assert_close(batch["teacher_context_weights"], torch.tensor([[0.25, 0.75]] * 4))
    assert trainer._metrics["train"]["rgsd/teacher_token_ratio"][-1] > 2.0  # two teachers, each with a longer prompt

    def loss_and_grads(inputs):
        trainer.model.zero_grad()
        loss = trainer._compute_loss(trainer.model, inputs)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]

    both, g_both = loss_and_grads(batch)
    rubric, g_rubric = loss_and_grads(_single_teacher_batch(batch, 0))
    reference, g_reference = loss_and_grads(_single_teacher_batch(batch, 1))
    assert rubric.item() != pytest.approx(reference.item())
    torch.testing.assert_close(both, 0.25 * rubric + 0.75 * reference, rtol=1e-5, atol=1e-7)
    for a, r, f in zip(g_both, g_rubric, g_reference, strict=True):
        torch.testing.assert_close(a, 0.25 * r + 0.75 * f, rtol=1e-4, atol=1e-7)


def _verifier(prompts, completions, **kwargs):
    return [1.0 if i % 2 == 0 else 0.0 for i in range(len(prompts))]


def test_sgsd_gate_trains_and_needs_a_verifier(tiny_model_path, tmp_path):
    dataset = Dataset.from_list(_rows())
    # The tiny model's teachers differ from it by ~0.01 nats, under the published 0.05 confidence threshold.
    args = _config(
        tmp_path, teacher_combine="sgsd_gate", distillation_support="sampled_token", gate_confidence_threshold=0.0
    )
    with pytest.raises(ValueError, match="no reward_funcs"):
        RGSDTrainer(tiny_model_path, args=args, train_dataset=dataset, teacher_context=TwoTeachers())
    trainer = RGSDTrainer(
        tiny_model_path, reward_funcs=_verifier, args=args, train_dataset=dataset, teacher_context=TwoTeachers()
    )
    batch = trainer._generate_and_score_completions(list(dataset))
    assert batch["rgsd_outcome"].tolist() == [1.0, -1.0, 1.0, -1.0]
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_sgsd_gate_needs_the_sampled_token_support():
    with pytest.raises(ValueError, match="distillation_support='sampled_token'"):
        RGSDConfig(
            output_dir="out", use_cpu=True, bf16=False, teacher_combine="sgsd_gate", distillation_support="full"
        )
    with pytest.raises(ValueError, match="gate_tau=0"):
        RGSDConfig(
            output_dir="out",
            use_cpu=True,
            bf16=False,
            teacher_combine="sgsd_gate",
            distillation_support="sampled_token",
            gate_tau=0,
        )


def test_sgsd_preset_sets_the_published_values():
    args = RGSDConfig(output_dir="out", use_cpu=True, bf16=False, teacher_context="sgsd", skill_bank=__file__)
    assert (args.teacher_combine, args.distillation_support, args.loss_type) == ("sgsd_gate", "sampled_token", "grpo")
    assert (args.num_teacher_contexts, args.gate_tau, args.gate_polarity_clip) == (8, 1.0, 3.0)
    assert args.gate_confidence_threshold == 0.05


def test_sgsd_gate_applies_to_a_single_teacher(tiny_model_path, tmp_path):
    dataset = Dataset.from_list(_rows())

    def loss_with(confidence):
        args = _config(
            tmp_path,
            teacher_combine="sgsd_gate",
            distillation_support="sampled_token",
            gate_confidence_threshold=confidence,
        )
        trainer = RGSDTrainer(tiny_model_path, reward_funcs=_verifier, args=args, train_dataset=dataset)
        trainer.model.train()
        torch.manual_seed(0)
        batch = trainer._generate_and_score_completions(list(dataset))
        assert batch["teacher_prompt_ids"].dim() == 2 and batch["rgsd_outcome"].shape == (4,)
        loss = trainer._compute_loss(trainer.model, batch)
        return loss.item(), trainer._metrics["train"]["rgsd/gate_active_frac"][-1]

    closed_loss, closed_active = loss_with(100.0)  # no mean log-ratio is that large: every teacher is unsure
    open_loss, open_active = loss_with(0.0)
    assert closed_loss == 0.0 and closed_active == 0.0
    assert open_loss != 0.0 and open_active > 0.5
