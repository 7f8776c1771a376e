"""Teacher-side n-gram penalties (trl_rubric.losses.teacher_bias): the bans against transformers' processor and plain
loops, and the divergence with the penalty against a dense reference (values and gradients, every support)."""

import random

import pytest
import torch
from transformers import NoRepeatNGramLogitsProcessor

from trl_rubric.losses import generalized_jsd, token_divergence
from trl_rubric.losses import teacher_bias as tb

V = 13


def _hf_bans(ids, n):
    # transformers' own rule, applied to every prefix of the completion
    proc, bans = NoRepeatNGramLogitsProcessor(n), set()
    for t in range(len(ids)):
        prefix = torch.tensor([ids[:t]], dtype=torch.long).reshape(1, t)
        scores = proc(prefix, torch.zeros(1, V))
        bans |= {(t, int(v)) for v in torch.nonzero(torch.isinf(scores[0])).flatten()}
    return bans


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_repeat_bans_equal_transformers_no_repeat_ngram_processor(n):
    rng = random.Random(n)
    for _ in range(30):
        ids = [rng.randrange(V) for _ in range(rng.randrange(0, 24))]
        assert set(tb.repeated_ngram_bans(ids, n)) == _hf_bans(ids, n)


def test_copy_bans_equal_plain_loop():
    rng = random.Random(0)
    for _ in range(30):
        n = rng.choice([2, 3, 4])
        teacher = [rng.randrange(6) for _ in range(30)]
        student = teacher[:8]
        completion = [rng.randrange(6) for _ in range(25)]
        expected = set()
        for t in range(len(completion)):
            for i in range(len(teacher) - n + 1):
                gram = teacher[i : i + n]
                in_student = any(student[j : j + n] == gram for j in range(len(student) - n + 1))
                if not in_student and t >= n - 1 and completion[t - n + 1 : t] == gram[:-1]:
                    expected.add((t, gram[-1]))
        table = tb.teacher_only_ngrams(teacher, student, n)
        assert set(tb.copy_ngram_bans(completion, table, n)) == expected


def test_content_filter_leaves_list_markers_alone():
    # 0..2 are markers ("\n", "2", "."), 5..9 words: a repeated marker run is no ban, a repeated item is
    content = frozenset(range(5, 10))
    markers_only = [0, 1, 2, 5, 0, 1, 2, 6]
    assert tb.repeated_ngram_bans(markers_only, 3, content) == []
    repeated_item = [0, 1, 2, 5, 6, 7, 0, 1, 2, 5, 6, 7]
    assert (11, 7) in tb.repeated_ngram_bans(repeated_item, 3, content)


def _dense_reference(bans, mask, penalty, t_hidden, t_weight):
    logits = t_hidden.float() @ t_weight.float().t()
    flat = torch.full(mask.shape, -1, dtype=torch.long)
    flat[mask] = torch.arange(int(mask.sum()))
    for b, row in enumerate(bans):
        for t, tok in row:
            if mask[b, t]:
                logits[flat[b, t], tok] -= penalty
    return logits


def _batch(seed=0, B=3, T=10, H=8):
    g = torch.Generator().manual_seed(seed)
    completion = torch.randint(0, 4, (B, T), generator=g)  # a small alphabet: many repeats
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 7:] = False
    bans = [tb.repeated_ngram_bans(row[m].tolist(), 2) for row, m in zip(completion, mask, strict=True)]
    n = int(mask.sum())
    return completion, mask, bans, torch.randn(n, H, generator=g), torch.randn(V, H, generator=g)


def test_bias_columns_add_the_penalty_to_exactly_the_banned_logits():
    completion, mask, bans, t_hidden, t_weight = _batch()
    assert sum(map(len, bans)) > 5
    cols, table = tb.bias_columns(bans, mask, 3.0, V)
    got = torch.cat([t_hidden, cols], 1) @ torch.cat([t_weight, table], 1).t()
    torch.testing.assert_close(got, _dense_reference(bans, mask, 3.0, t_hidden, t_weight))


@pytest.mark.parametrize("support", ["full", "topk", "sampled_token"])
def test_divergence_with_teacher_penalty_equals_dense_biased_teacher(support):
    completion, mask, bans, t_hidden, t_weight = _batch(1)
    g = torch.Generator().manual_seed(2)
    n, H = t_hidden.shape
    s_hidden = torch.randn(n, H, generator=g)
    s_weight = torch.randn(V, H, generator=g)
    targets = completion[mask]
    kwargs = dict(beta=0.5 if support != "sampled_token" else 1.0, support=support, target_ids=targets, top_k=4)
    cols, table = tb.bias_columns(bans, mask, 4.0, V)

    def run(th, tw):
        sh, sw = s_hidden.clone().requires_grad_(), s_weight.clone().requires_grad_()
        out = token_divergence(sh, sw, None, th, tw, None, **kwargs)
        out.divergence.sum().backward()
        return out, sh.grad, sw.grad

    got, gh, gw = run(torch.cat([t_hidden, cols], 1), torch.cat([t_weight, table], 1))
    # Reference: the teacher's biased logits themselves as hidden states, through an identity head
    ref_logits = _dense_reference(bans, mask, 4.0, t_hidden, t_weight)
    want, wh, ww = run(ref_logits, torch.eye(V))
    torch.testing.assert_close(got.divergence, want.divergence, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.teacher_logps, want.teacher_logps, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gh, wh, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, ww, rtol=1e-4, atol=1e-5)
    if support == "full":
        # and the plain full-logits JSD with autograd
        sh = s_hidden.clone().requires_grad_()
        plain = generalized_jsd(torch.log_softmax(sh @ s_weight.t(), -1), torch.log_softmax(ref_logits, -1), 0.5)
        plain.sum().backward()
        torch.testing.assert_close(got.divergence, plain.detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gh, sh.grad, rtol=1e-4, atol=1e-5)


def test_repeated_line_gets_a_lower_teacher_target_on_the_repeating_token():
    # "1. drink water . 2. drink water ." as ids: the second "water" (and the "." after it) completes a repeated 3-gram
    one, two, dot, drink, water, nl = 0, 1, 2, 5, 6, 7
    completion = torch.tensor([[one, dot, drink, water, dot, nl, two, dot, drink, water, dot]])
    mask = torch.ones_like(completion, dtype=torch.bool)
    content = frozenset({drink, water})
    bans = [tb.repeated_ngram_bans(completion[0].tolist(), 3, content)]
    assert bans == [[(9, water), (10, dot)]]
    g = torch.Generator().manual_seed(3)
    t_hidden, t_weight = torch.randn(11, 4, generator=g), torch.randn(V, 4, generator=g)
    cols, table = tb.bias_columns(bans, mask, 5.0, V)
    targets = completion[0]
    plain = token_divergence(t_hidden, t_weight, None, t_hidden, t_weight, None, target_ids=targets)
    biased = token_divergence(
        t_hidden,
        t_weight,
        None,
        torch.cat([t_hidden, cols], 1),
        torch.cat([t_weight, table], 1),
        None,
        target_ids=targets,
    )
    drop = plain.teacher_logps - biased.teacher_logps
    assert drop[9] > 4.0  # the repeating token loses most of its probability
    assert drop[10] > 4.0
    assert torch.all(drop[:9].abs() < 1e-5)  # no other position moves
    # the student, equal to the teacher before, now differs from it there (a JSD, at most log 2)
    assert biased.divergence[9] > plain.divergence[9] + 1e-3
    hit = tb.banned_target_mask(bans, completion)
    assert hit.nonzero().tolist() == [[0, 9], [0, 10]]


def test_bias_columns_refuse_an_infinite_penalty():
    with pytest.raises(ValueError, match="finite positive"):
        tb.bias_columns([[]], torch.ones(1, 2, dtype=torch.bool), float("inf"), V)


# A small vocabulary with real texts, for the empty-item bans.
TEXTS = ["1", "2", ".", " ", "\n", ".\n", ":\n\n", "Drink", " water", "x\n", "-", " -", "\n\n", ")"]


def _plain_empty_item_bans(ids, texts):
    """The rule read literally: at each t, decode the completion so far and take its last line. If that line is list
    markers only, ban every token whose text, before its first line break, has no letter or digit, and every number
    or bullet token ("*" excepted) that a space separates from the marker."""
    import re

    markers_only = re.compile(r"\s*(?:(?:[-*•+]|\d{1,3}[.)])\s*)+")
    enders = [i for i, x in enumerate(texts) if "\n" in x and not any(c.isalnum() for c in x.split("\n")[0])]
    starts = [i for i, x in enumerate(texts) if x.strip() and (x.strip().isdigit() or x.strip() in "-•+")]
    bans = set()
    for t in range(len(ids)):
        line = "".join(texts[i] for i in ids[:t]).split("\n")[-1]
        if markers_only.fullmatch(line):
            bans |= {(t, e) for e in enders}
            bans |= {(t, m) for m in starts if line.endswith(" ") or texts[m].startswith(" ")}
    return bans


def test_empty_item_bans_equal_the_plain_rule():
    enders, starts = tb.line_ender_ids(TEXTS), tb.marker_start_ids(TEXTS)
    assert [TEXTS[i] for i in enders] == ["\n", ".\n", ":\n\n", "\n\n"]  # not "x\n": it adds a word
    assert [TEXTS[i] for i in starts] == ["1", "2", "-", " -"]
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.randrange(len(TEXTS)) for _ in range(rng.randrange(0, 20))]
        assert set(tb.empty_item_bans(ids, TEXTS, enders, starts)) == _plain_empty_item_bans(ids, TEXTS)


def test_empty_item_bans_hit_a_bare_marker_line_only():
    enders = tb.line_ender_ids(TEXTS)
    # "1. Drink water\n2.\n": the line "2." may not end; "1. Drink water" may, and so may an empty line.
    ids = [0, 2, 3, 7, 8, 4, 1, 2, 4, 4]
    bans = tb.empty_item_bans(ids, TEXTS, enders)
    assert {t for t, _ in bans} == {2, 3, 8}  # after "1.", after "1. " and after "2."
    assert (8, 4) in bans and all(tok in enders for _, tok in bans)
    # row_bans adds them to the n-gram bans
    assert set(tb.row_bans(ids, empty_items=(TEXTS, enders, []))) == set(bans)
    assert tb.row_bans(ids) == []


def test_empty_item_bans_stop_a_second_marker_but_not_a_decimal():
    enders, starts = tb.line_ender_ids(TEXTS), tb.marker_start_ids(TEXTS)
    one, two, dot, space = 0, 1, 2, 3
    # "1. " then "1": the doubled marker of "1. 1. Plan ..." is banned at t=3 (after the space)
    bans = set(tb.empty_item_bans([one, dot, space, one], TEXTS, enders, starts))
    assert (3, one) in bans and (3, two) in bans
    # "1." then "2" with no space ("1.2"): not banned at t=2; " -" (a spaced bullet) is
    bans = set(tb.empty_item_bans([one, dot, two], TEXTS, enders, starts))
    assert (2, two) not in bans and (2, TEXTS.index(" -")) in bans


# ---------------------------------------------------------------- in the trainer


def _trainer_with_repeated_completions(tiny_model_path, tmp_path, **overrides):
    from datasets import Dataset

    from trl_rubric.testing import make_rubric_rows, rgsd_test_config
    from trl_rubric.trainers.rgsd import RGSDTrainer

    # A live teacher that sees only the prompt is the student itself: without penalties the divergence is 0
    args = rgsd_test_config(
        tmp_path / "out", teacher_model_kind="live", teacher_prompt_template="{prompt}", token_clip=None, **overrides
    )
    rows = make_rubric_rows(2)
    trainer = RGSDTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(rows))
    batch = trainer._generate_and_score_completions(rows)
    line = trainer._tokenizer("drink water now. ", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([line * 3, line * 3])
    batch.update(
        completion_ids=ids,
        completion_mask=torch.ones_like(ids),
        rgsd_loss_mask=torch.ones_like(ids),
        rgsd_num_items_in_batch=torch.tensor(float(ids.numel())),
    )
    return trainer, batch, len(line)


def test_trainer_teacher_penalty_turns_a_zero_loss_positive_on_repeated_lines(tiny_model_path, tmp_path):
    trainer, batch, _ = _trainer_with_repeated_completions(tiny_model_path, tmp_path)
    plain = abs(trainer._compute_loss(trainer.model, batch).item())
    assert plain < 1e-6
    trainer, batch, _ = _trainer_with_repeated_completions(
        tiny_model_path, tmp_path, teacher_no_repeat_ngram_size=3, teacher_ngram_penalty=5.0
    )
    loss = trainer._compute_loss(trainer.model, batch)
    loss.backward()
    # small (the tiny random model spreads its mass over 512 tokens, a banned one holds little), but far from 0
    assert loss.item() > 1e-5 + 100 * plain
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters())


def test_trainer_teacher_penalty_logits_equal_the_dense_reference(tiny_model_path, tmp_path):
    trainer, batch, line = _trainer_with_repeated_completions(
        tiny_model_path, tmp_path, teacher_no_repeat_ngram_size=3, teacher_ngram_penalty=5.0
    )
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    t_hidden, t_weight, _ = trainer._self_teacher_hidden(unwrapped, batch)
    hidden, weight, _ = trainer._penalize_teacher(batch, t_hidden, t_weight)
    got = hidden @ weight.t()
    want = t_hidden @ t_weight.t()
    bans = tb.batch_bans(
        batch["completion_ids"],
        batch["completion_mask"],
        no_repeat_ngram_size=3,
        content_tokens=trainer._content_tokens,
    )
    assert all(t >= line for row in bans for t, _ in row) and bans[0]  # the second and third line only
    for b, row in enumerate(bans):
        for t, tok in row:
            want[b, t, tok] -= 5.0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_trainer_mask_mode_leaves_repeating_tokens_out_of_the_loss(tiny_model_path, tmp_path):
    trainer, batch, line = _trainer_with_repeated_completions(
        tiny_model_path, tmp_path, teacher_no_repeat_ngram_size=3, teacher_ngram_mode="mask"
    )
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    t_hidden, t_weight, _ = trainer._self_teacher_hidden(unwrapped, batch)
    _, _, inputs = trainer._penalize_teacher(batch, t_hidden, t_weight)
    kept = inputs["rgsd_loss_mask"]
    assert kept[:, :line].all()  # the first line is new
    assert kept[:, 2 * line :].float().mean() < 0.5  # most of the third line repeats


def _penalized_logits(tiny_model_path, tmp_path, text, **overrides):
    """The completion `text` (twice, as a batch of 2) scored by the teacher with and without its penalties:
    `(ids, penalised logits [B, T, V], plain logits, every token's text)`."""
    trainer, batch, _ = _trainer_with_repeated_completions(
        tiny_model_path, tmp_path, teacher_ngram_penalty=5.0, **overrides
    )
    return _scored(trainer, batch, text)


def _scored(trainer, batch, text):
    """`_penalized_logits` on a trainer already built."""
    tok = trainer._tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    batch["completion_ids"] = torch.tensor([ids, ids])
    for key in ("completion_mask", "rgsd_loss_mask"):
        batch[key] = torch.ones_like(batch["completion_ids"])
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    t_hidden, t_weight, _ = trainer._self_teacher_hidden(unwrapped, batch)
    hidden, weight, _ = trainer._penalize_teacher(batch, t_hidden, t_weight)
    texts = [tok.decode([i]) for i in range(len(tok))]
    return ids, hidden @ weight.t(), t_hidden @ t_weight.t(), texts


def _position_after(ids, texts, predicate):
    return next(t for t in range(1, len(ids)) if predicate("".join(texts[i] for i in ids[:t])))


def test_trainer_empty_item_ban_lowers_the_teacher_logits_of_line_ends_after_a_bare_marker(tiny_model_path, tmp_path):
    ids, got, plain, texts = _penalized_logits(
        tiny_model_path, tmp_path, "1. drink water\n2.\n3.", teacher_ban_empty_items=True
    )
    newline = texts.index("\n")
    # the position after "2." (its line holds a marker only): ending the line there costs 5; after "water" nothing
    after_marker = _position_after(ids, texts, lambda prefix: prefix.endswith("\n2."))
    after_words = _position_after(ids, texts, lambda prefix: prefix.endswith("water"))
    torch.testing.assert_close(got[0, after_marker, newline], plain[0, after_marker, newline] - 5.0)
    torch.testing.assert_close(got[0, after_words], plain[0, after_words])


@pytest.mark.parametrize(
    ("flags", "ends_banned", "second_marker_banned"),
    [
        ({"teacher_ban_empty_items": True}, True, False),
        ({"teacher_ban_doubled_markers": True}, False, True),
        ({"teacher_ban_empty_items": True, "teacher_ban_doubled_markers": True}, True, True),
    ],
)
def test_trainer_empty_item_flags_ban_what_they_name(
    tiny_model_path, tmp_path, flags, ends_banned, second_marker_banned
):
    ids, got, plain, texts = _penalized_logits(tiny_model_path, tmp_path, "1. 1. drink", **flags)
    lowered = (got - plain)[0] < -4.0  # [T, V]
    t = _position_after(ids, texts, lambda prefix: prefix == "1. ")  # after "1. ": a bare marker line
    newline, one = texts.index("\n"), texts.index("1")
    assert bool(lowered[t, newline]) == ends_banned
    assert bool(lowered[t, one]) == second_marker_banned


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"teacher_no_repeat_ngram_size": 1}, "teacher_no_repeat_ngram_size is 1"),
        ({"teacher_copy_ngram_size": 0}, "teacher_copy_ngram_size is 0"),
        ({"teacher_ngram_penalty": float("inf")}, "teacher_ngram_penalty is inf"),
        ({"teacher_ngram_mode": "drop"}, "teacher_ngram_mode is 'drop'"),
        ({"teacher_no_repeat_ngram_size": 4, "teacher_context": "skills"}, "one teacher context per rollout"),
        ({"teacher_ban_empty_items": True, "teacher_context": "criteria"}, "one teacher context per rollout"),
        ({"teacher_ban_doubled_markers": True, "teacher_context": "criteria"}, "one teacher context per rollout"),
    ],
)
def test_config_refuses_bad_teacher_penalties_by_name(overrides, message):
    from trl_rubric.trainers.rgsd import RGSDConfig

    with pytest.raises(ValueError, match=message):
        RGSDConfig(output_dir="/tmp/x", use_cpu=True, bf16=False, **overrides)


def test_trainer_teacher_guard_penalises_exactly_what_the_rollout_guard_bans(tiny_model_path, tmp_path):
    from trl_rubric.evaluation import DegenerationGuard

    trainer, batch, _ = _trainer_with_repeated_completions(
        tiny_model_path, tmp_path, teacher_ngram_penalty=5.0, rollout_degeneration_guard=2, teacher_guard=True
    )
    ids, got, plain, texts = _scored(trainer, batch, "1. drink water.\n2. Drink Water.\n3. drink")
    # The reference: a fresh guard asked, position by position, what it forbids after the tokens before it.
    guard = DegenerationGuard(trainer._tokenizer, 2, eos_token_ids=list(trainer.eos_token_ids))
    want = plain.clone()
    for t in range(len(ids)):
        for banned in guard.bans(ids[:t]):
            want[:, t, banned] -= 5.0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    # Among them: the line end after the repeated "2. Drink Water." (case ignored, as the guard ignores it).
    end = _position_after(ids, texts, lambda prefix: prefix.endswith("Drink Water."))
    newline = texts.index("\n")
    torch.testing.assert_close(got[0, end, newline], plain[0, end, newline] - 5.0)


def test_config_refuses_teacher_guard_without_a_rollout_guard(tmp_path):
    from trl_rubric.testing import rgsd_test_config

    with pytest.raises(ValueError, match="rollout_degeneration_guard is None"):
        rgsd_test_config(tmp_path, teacher_guard=True)
    with pytest.raises(ValueError, match="would mask nothing"):
        rgsd_test_config(tmp_path, teacher_guard=True, rollout_degeneration_guard=3, teacher_ngram_mode="mask")
