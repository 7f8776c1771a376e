"""RGSDConfig.span_weight / span_criteria: the named criteria's rule-tag spans found in an answer, mapped to tokens,
and the distillation loss weighted on those the teacher prefers, against a plain reference (values and gradients);
the refusals before training; its effect and its logs in a run."""

from __future__ import annotations

import pytest
import torch
from _rgsd_reference import assert_matches_reference, completion_log_softmax, student_log_softmax

from trl_rubric.data import RubricDatasetError
from trl_rubric.rubric import Rubric
from trl_rubric.testing import make_rubric_rows, rgsd_test_config
from trl_rubric.trainers.rgsd_spans import criterion_spans


def _criterion(text, weight=2.0, title=None, tags=()):
    return {"text": text, "weight": weight, "category": "essential", "title": title, "tags": list(tags)}


def test_criterion_spans_are_the_named_positive_criteria_rule_matches():
    rubric = Rubric.from_any(
        [
            _criterion(
                "Mentions seven to nine hours.", title="key term", tags=[r"rule:regex:7\s*-\s*9|seven to nine"]
            ),
            _criterion("Mentions rest.", title="key term", tags=["rule:contains:rest"]),
            _criterion("Under 60 words.", title="short", tags=["rule:max_words:60"]),
            _criterion("Says 'obviously'.", weight=-1.0, title="key term", tags=["rule:contains:obviously"]),
            _criterion("Mentions sleep.", title="other", tags=["rule:contains:sleep"]),
        ]
    )
    text = "Adults need 7-9 hours of sleep; REST well, obviously. Seven to nine is typical. Restless? Rest."
    spans = sorted(criterion_spans(text, rubric, ["key term"]))
    assert [text[a:b] for a, b in spans] == ["7-9", "REST", "Seven to nine", "Rest"]  # "Restless" is another word
    assert [text[a:b] for a, b in criterion_spans(text, rubric, ["other"])] == ["sleep"]
    assert criterion_spans(text, rubric, ["short"]) == []  # a word limit has no span
    assert criterion_spans("nothing here", rubric, ["key term"]) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(span_weight=-1.0), "span_weight is -1.0"),
        (dict(span_weight=float("nan"), span_criteria=["key term"]), "span_weight is nan"),
        (dict(span_nll_weight=float("inf"), span_criteria=["key term"]), "span_nll_weight is inf"),
        (dict(span_weight=4.0), "span_criteria, which is None"),
        (dict(span_nll_weight=0.1), "span_criteria, which is None"),
        (dict(span_criteria=["key term"]), "changes nothing"),
        (dict(span_weight=4.0, span_criteria="key term"), "criteria is the string 'key term'"),
        (dict(span_weight=4.0, span_criteria=[]), "non-empty list"),
    ],
)
def test_config_refuses_bad_span_settings(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        rgsd_test_config(tmp_path, **overrides)
    assert rgsd_test_config(tmp_path, span_weight=4.0, span_criteria=("key term",)).span_criteria == ["key term"]
    assert rgsd_test_config(tmp_path, span_nll_weight=0.1, span_criteria=["key term"]).span_weight == 1.0


def _rows(n=4, tag=r"rule:regex:[a-z]{2}"):
    rows = make_rubric_rows(n)
    for row in rows:
        row["rubric"] = [*row["rubric"], _criterion("Mentions the key term.", title="key term", tags=[tag])]
    return rows


def test_trainer_refuses_a_row_without_a_span_criterion_before_training(tiny_model_path, tmp_path):
    from datasets import Dataset

    from trl_rubric import RGSDTrainer

    rows = _rows()
    rows[2]["rubric"] = rows[2]["rubric"][:-1]  # row 2 lost its key term
    args = rgsd_test_config(tmp_path, span_weight=4.0, span_criteria=["key term"])
    with pytest.raises(
        RubricDatasetError, match=r"train_dataset row 2: column 'rubric': span_criteria=\['key term'\]"
    ):
        RGSDTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(rows))
    rows = _rows(tag="rule:max_words:10")  # a rule with no span is no span criterion
    with pytest.raises(RubricDatasetError, match="row 0"):
        RGSDTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(rows))
    args = rgsd_test_config(tmp_path, span_weight=4.0, span_criteria=["key term"], teacher_context="criteria")
    with pytest.raises(ValueError, match="one ungated teacher per rollout"):
        RGSDTrainer(
            tiny_model_path, args=args, train_dataset=Dataset.from_list([{**r, "skills": ["x"]} for r in _rows()])
        )


def _trainer(tiny_model_path, tmp_path, monkeypatch, n_rows=4, spans=True, **overrides):
    """An RGSD trainer with span weighting on the key term; with `spans`, each answer's span is a quarter to half of
    its decoded text (the tiny model writes random tokens, so a real term would rarely occur)."""
    from datasets import Dataset

    import trl_rubric.trainers.rgsd as rgsd
    import trl_rubric.trainers.rgsd_spans as rgsd_spans

    if spans:
        monkeypatch.setattr(
            rgsd_spans, "criterion_spans", lambda text, rubric, names: [(len(text) // 4, len(text) // 2)]
        )
    config = dict(token_clip=None, max_completion_length=16, span_weight=5.0, span_criteria=["key term"])
    args = rgsd_test_config(tmp_path / "out", **{**config, **overrides})
    trainer = rgsd.RGSDTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(_rows(n_rows)))
    trainer.model.train()
    return trainer, _rows(n_rows)


def _reference(trainer, batch):
    """Per-token beta-0.5 JSD from plain full softmaxes, and whether the teacher prefers each sampled token."""
    s_logp = student_log_softmax(trainer.model, batch)
    with torch.no_grad():
        t_logp = completion_log_softmax(trainer.model, *trainer._teacher_inputs(batch))  # step 0: the frozen teacher
    p_s, p_t = s_logp.exp(), t_logp.exp()
    m = 0.5 * p_s + 0.5 * p_t
    jsd = (0.5 * torch.xlogy(p_t, p_t / m) + 0.5 * p_s * (s_logp - m.log())).sum(-1)
    ids = batch["completion_ids"][..., None]
    prefers = t_logp.gather(-1, ids).squeeze(-1) > s_logp.detach().gather(-1, ids).squeeze(-1)
    return jsd, prefers


@pytest.mark.parametrize(
    ("loss_type", "weight", "nll_weight", "chunk"),
    [("dapo", 5.0, 0.0, None), ("grpo", 5.0, 0.0, None), ("bnpo", 5.0, 0.0, None), ("dapo", 3.0, 0.2, 2),
     ("grpo", 1.0, 0.5, None)],
)  # fmt: skip
def test_span_weights_match_a_plain_reference_in_value_and_gradient(
    tiny_model_path, tmp_path, monkeypatch, loss_type, weight, nll_weight, chunk
):
    torch.manual_seed(0)
    trainer, rows = _trainer(
        tiny_model_path, tmp_path, monkeypatch, loss_type=loss_type, span_weight=weight, span_nll_weight=nll_weight,
        distillation_chunk_size=chunk,
    )  # fmt: skip
    batch = trainer._generate_and_score_completions(rows)
    kept, spans = batch["rgsd_loss_mask"].bool(), batch["rgsd_span_mask"]
    assert spans.any() and not (spans & ~kept).any()
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    loss = trainer._compute_loss(trainer.model, batch)
    grads = torch.autograd.grad(loss, params)
    jsd, prefers = _reference(trainer, batch)
    weighted = spans & prefers & kept
    assert weighted.any() and (spans & ~prefers & kept).any()  # both kinds of span token occur in this batch
    nll = -student_log_softmax(trainer.model, batch).gather(-1, batch["completion_ids"][..., None]).squeeze(-1)
    per_token = torch.where(kept, jsd, 0.0) * torch.where(weighted, weight, 1.0)
    per_token = per_token + torch.where(weighted, nll_weight * nll, 0.0)
    assert_matches_reference(trainer, batch, loss, grads, params, per_token, kept, loss_type)
    # The same batch without span criteria is the plain distillation loss.
    trainer.args.span_criteria = None
    plain = trainer._compute_loss(trainer.model, batch)
    assert loss.item() > 1.02 * plain.item() > 0  # weight > 1 on a divergence >= 0: more loss, never less
    metrics = trainer._metrics["train"]
    assert metrics["rgsd/span_tokens"] == [spans.sum().item()]
    assert metrics["rgsd/span_preferred_frac"][0] == pytest.approx((weighted.sum() / spans.sum()).item())


def _span_gap(trainer, batch, tokens):
    """The teacher's log-prob of the sampled tokens minus the student's, summed over `tokens`."""
    jsd, _ = _reference(trainer, batch)
    with torch.no_grad():
        ids = batch["completion_ids"][..., None]
        s = student_log_softmax(trainer.model, batch).gather(-1, ids).squeeze(-1)
        t = completion_log_softmax(trainer.model, *trainer._teacher_inputs(batch)).gather(-1, ids).squeeze(-1)
    return (t - s)[tokens].sum().item(), jsd.detach()[tokens].sum().item()


def test_span_weight_pulls_the_student_to_the_teacher_faster_on_the_preferred_span_tokens(
    tiny_model_path, tmp_path, monkeypatch
):
    left = {}
    for weight in (1.0, 8.0):
        torch.manual_seed(0)
        off = dict(span_criteria=None, span_weight=1.0) if weight == 1.0 else dict(span_weight=weight)
        trainer, rows = _trainer(tiny_model_path, tmp_path, monkeypatch, **off)
        if weight == 1.0:  # no span mask without span_criteria: the same tokens in both runs, set by hand
            batch = trainer._generate_and_score_completions(rows)
            _, prefers = _reference(trainer, batch)
            tokens = batch["rgsd_loss_mask"].bool() & prefers
            tokens[:, : tokens.size(1) // 2] = False  # a fixed set of preferred tokens: "the span"
            first_batch = batch
        batch = {**first_batch, "rgsd_span_mask": tokens}
        optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.5)
        before = _span_gap(trainer, batch, tokens)
        for _ in range(3):
            trainer._compute_loss(trainer.model, batch).backward()
            optimizer.step()
            optimizer.zero_grad()
        after = _span_gap(trainer, batch, tokens)
        left[weight] = (after[0] / before[0], after[1] / before[1])
    # Measured: weight 1 closes about 6% of the log-prob gap (13% of the JSD) in three steps, weight 8 about 12% (28%).
    for i in range(2):
        assert 1 - left[8.0][i] > 1.5 * (1 - left[1.0][i]) > 0, left


def test_a_training_run_finds_real_spans_and_logs_them(tiny_model_path, tmp_path, monkeypatch):
    # Unpatched: the key term's regex (two letters) is found in the tiny model's decoded answers; with accumulation
    # the span mask is shuffled and split with the batch.
    trainer, _ = _trainer(
        tiny_model_path, tmp_path, monkeypatch, n_rows=8, spans=False, gradient_accumulation_steps=2,
        steps_per_generation=2,
    )  # fmt: skip
    trainer.train()
    logs = [e for e in trainer.state.log_history if "rgsd/span_tokens" in e]
    assert logs and all(e["rgsd/span_tokens"] > 0 for e in logs)
    assert all(0 <= e["rgsd/span_preferred_frac"] <= 1 for e in logs if "rgsd/span_preferred_frac" in e)
    assert any("rgsd/span_preferred_frac" in e for e in logs)


@pytest.mark.parametrize("nll_weight", [0.0, 1.0])
def test_span_nll_takes_the_student_past_the_teacher_on_the_span_tokens(
    tiny_model_path, tmp_path, monkeypatch, nll_weight
):
    # The divergence alone moves the student toward the teacher's probability of each preferred span token (measured:
    # the summed gap 0.110 -> 0.066 in ten steps at weight 8); the NLL takes it past the teacher (0.110 -> -0.046).
    torch.manual_seed(0)
    trainer, rows = _trainer(tiny_model_path, tmp_path, monkeypatch, span_weight=8.0, span_nll_weight=nll_weight)
    batch = trainer._generate_and_score_completions(rows)
    _, prefers = _reference(trainer, batch)
    tokens = batch["rgsd_span_mask"] & prefers  # the teacher is ahead on each of them at step 0
    before = _span_gap(trainer, batch, tokens)[0]
    optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.5)
    for _ in range(10):
        trainer._compute_loss(trainer.model, batch).backward()
        optimizer.step()
        optimizer.zero_grad()
    after = _span_gap(trainer, batch, tokens)[0]
    assert before > 0
    assert (after < 0) if nll_weight else (0 < after < before), (before, after)


# ------------------------------------------------------------------ span_onset_weight: the pull to start the term


@pytest.mark.parametrize(
    ("kind", "arg", "starts"),
    [
        ("regex", r"\bfluids?\b|\bwater\b", ("fluid", "fluids", "water")),
        ("regex", "igneous|sedimentary|rock cycle", ("igneous", "sedimentary", "rock cycle")),
        ("regex", r"(?:blue light|screen)s?", ("blue light", "blue lights", "screen", "screens")),
        ("regex", "[Rr]est", ("Rest", "rest")),
        ("regex", r"seven to nine|7\s*-\s*9", ("seven to nine",)),  # "7" alone is too short to pull on
        ("regex", r"\d+ hours", ()),  # opens with a class: nothing to spell out
        ("regex", "unbalanced(", ()),
        ("contains", "rest", ("rest",)),
    ],
)
def test_term_starts_spell_out_what_a_rule_tag_can_start_with(kind, arg, starts):
    from trl_rubric.trainers.rgsd_spans import term_starts

    assert term_starts(kind, arg) == starts


def test_onset_token_ids_are_the_first_tokens_of_each_casing_and_spacing(tiny_model_path):
    from transformers import AutoTokenizer

    from trl_rubric.trainers.rgsd_spans import onset_token_ids

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    rubric = Rubric.from_any(
        [
            _criterion("Mentions a doctor.", title="key term", tags=[r"rule:regex:\bdoctors?\b"]),
            _criterion("Mentions sleep.", title="other", tags=["rule:contains:sleep"]),
        ]
    )
    ids = onset_token_ids(tok, rubric, ["key term"])
    expected = set()
    for text in ("doctor", " doctor", "Doctor", " Doctor", "doctors", " doctors", "Doctors", " Doctors"):
        first = tok.encode(text, add_special_tokens=False)[0]
        if len(tok.decode([first]).strip()) >= 2 or tok.decode([first]).strip() in ("doctor", "doctors"):
            expected.add(first)
    assert ids == sorted(expected) and ids
    assert tok.encode(" sleep", add_special_tokens=False)[0] not in ids or tok.encode(" sleep")[0] in expected
    assert onset_token_ids(tok, rubric, ["nothing named"]) == []


def _plain_onset(hidden, weight, ids, temperature=1.0, top_k=None):
    logp = torch.log_softmax((hidden.float() @ weight.float().t()) / temperature, -1)
    if top_k is not None:
        from trl_rubric.losses import teacher_top_k_logps

        logp = teacher_top_k_logps(hidden.float() @ weight.float().t() / temperature, *top_k)[0]
    return torch.stack(
        [logp[n, [i for i in row.tolist() if i >= 0]].logsumexp(-1) if (row >= 0).any() else logp.new_tensor(-1e9)
         for n, row in enumerate(ids)]
    )  # fmt: skip


def test_onset_logprob_of_the_teacher_top_k_matches_a_full_softmax():
    from trl_rubric.trainers.rgsd_spans import onset_logprob

    torch.manual_seed(0)
    hidden, weight = torch.randn(7, 8), torch.randn(40, 8)
    ids = torch.tensor([[1, 5, -1], [2, -1, -1], [3, 4, 30], [0, 9, -1], [7, -1, -1], [11, 12, 13], [39, -1, -1]])
    got = onset_logprob(hidden, weight, None, ids, temperature=0.7, chunk_size=3, top_k=(5, -10.0))
    torch.testing.assert_close(got, _plain_onset(hidden, weight, ids, 0.7, (5, -10.0)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="top_k shapes the teacher"):
        onset_logprob(hidden.requires_grad_(), weight, None, ids, top_k=(5, -10.0))


@pytest.mark.parametrize("chunk", [None, 3])
@pytest.mark.parametrize(("scale", "softcap", "bias"), [(1.0, None, False), (0.5, 3.0, True)])
def test_onset_logprob_matches_a_full_softmax_in_value_and_gradient(chunk, scale, softcap, bias):
    from trl_rubric.trainers.rgsd_spans import onset_logprob

    torch.manual_seed(0)
    hidden = torch.randn(7, 8, requires_grad=True)
    weight = torch.randn(40, 8, requires_grad=True)
    b = torch.randn(40, requires_grad=True) if bias else None
    ids = torch.tensor([[1, 5, -1], [2, -1, -1], [3, 4, 30], [0, 9, -1], [7, -1, -1], [11, 12, 13], [39, -1, -1]])
    got = onset_logprob(
        hidden, weight, b, ids, temperature=0.7, logit_scale=scale, final_logit_softcapping=softcap, chunk_size=chunk
    )
    z = (hidden @ weight.t() + (b if bias else 0)) * scale
    z = softcap * torch.tanh(z / softcap) if softcap else z
    logp = torch.log_softmax(z / 0.7, -1)
    ref = torch.stack([logp[n, row[row >= 0]].logsumexp(-1) for n, row in enumerate(ids)])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    upstream = torch.randn(7)  # each token's own weight, as the loss reduction gives it
    params = (hidden, weight, b) if bias else (hidden, weight)
    for a, r in zip(torch.autograd.grad((got * upstream).sum(), params),
                    torch.autograd.grad((ref * upstream).sum(), params), strict=True):  # fmt: skip
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-4)


def test_onset_divergence_is_the_bernoulli_kl_and_zero_without_ids():
    from trl_rubric.trainers.rgsd_spans import onset_divergence

    torch.manual_seed(1)
    s_h, t_h = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8)
    w = torch.randn(30, 8)
    ids = torch.tensor([[1, 2], [3, -1], [-1, -1], [4, 5]])
    kw = dict(temperature=1.0, logit_scale=1.0, final_logit_softcapping=None, chunk_size=None)
    kl, q_t, q_s = onset_divergence(s_h, w, None, t_h, w, None, ids, kw, {**kw, "top_k": None})
    pt, ps = _plain_onset(t_h, w, ids).exp(), _plain_onset(s_h, w, ids).exp()
    ref = pt * (pt / ps).log() + (1 - pt) * ((1 - pt) / (1 - ps)).log()
    keep = torch.tensor([True, True, False, True])
    torch.testing.assert_close(kl[keep], ref[keep])
    assert kl[2] == 0 and q_t[2] == 0 and q_s[2] == 0  # a row with no term
    (grad,) = torch.autograd.grad(kl.sum(), s_h)
    assert torch.isfinite(grad).all() and grad[2].abs().sum() == 0 and grad[0].abs().sum() > 0
    same, _, _ = onset_divergence(s_h, w, None, s_h.detach(), w, None, ids, kw, {**kw, "top_k": None})
    torch.testing.assert_close(same, torch.zeros(4), atol=1e-6, rtol=0)  # teacher = student: nothing to learn


def _onset_trainer(tiny_model_path, tmp_path, monkeypatch, n_rows=4, **overrides):
    from datasets import Dataset

    import trl_rubric.trainers.rgsd as rgsd

    rows = _rows(n_rows, tag=r"rule:regex:\bdoctor\b|fever")
    config = dict(token_clip=None, max_completion_length=16, span_weight=1.0, span_onset_weight=20.0,
                  span_criteria=["key term"])  # fmt: skip
    args = rgsd_test_config(tmp_path / "out", **{**config, **overrides})
    trainer = rgsd.RGSDTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(rows))
    trainer.model.train()
    return trainer, rows


def _reference_onset(trainer, batch):
    """Per token, the Bernoulli KL of starting the term from plain full softmaxes, and the two probabilities."""
    s_logp = student_log_softmax(trainer.model, batch)
    with torch.no_grad():
        t_logp = completion_log_softmax(trainer.model, *trainer._teacher_inputs(batch))
    ids = batch["rgsd_onset_ids"]
    pick = lambda logp: torch.stack([logp[b][:, ids[b][ids[b] >= 0]].logsumexp(-1) for b in range(len(ids))])  # noqa: E731
    q_s, q_t = pick(s_logp).exp(), pick(t_logp).exp()
    kl = q_t * (q_t.log() - q_s.log()) + (1 - q_t) * ((1 - q_t).log() - (1 - q_s).log())
    return kl, q_t, q_s


@pytest.mark.parametrize(("loss_type", "chunk"), [("dapo", None), ("grpo", 2), ("bnpo", None)])
def test_span_onset_matches_a_plain_reference_in_value_and_gradient(
    tiny_model_path, tmp_path, monkeypatch, loss_type, chunk
):
    torch.manual_seed(0)
    trainer, rows = _onset_trainer(
        tiny_model_path, tmp_path, monkeypatch, loss_type=loss_type, distillation_chunk_size=chunk
    )
    batch = trainer._generate_and_score_completions(rows)
    assert (batch["rgsd_onset_ids"] >= 0).sum(-1).min() >= 1  # every row has its term's first tokens
    kept = batch["rgsd_loss_mask"].bool()
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    loss = trainer._compute_loss(trainer.model, batch)
    grads = torch.autograd.grad(loss, params)
    jsd, _ = _reference(trainer, batch)
    kl, q_t, q_s = _reference_onset(trainer, batch)
    per_token = torch.where(kept, jsd + 20.0 * kl, 0.0)
    assert_matches_reference(trainer, batch, loss, grads, params, per_token, kept, loss_type)
    metrics = trainer._metrics["train"]
    assert metrics["rgsd/onset_teacher_prob"][0] == pytest.approx(q_t[kept].mean().item(), rel=1e-4)
    assert metrics["rgsd/onset_student_prob"][0] == pytest.approx(q_s[kept].mean().item(), rel=1e-4)


def test_span_onset_brings_the_students_term_probability_to_the_teachers(tiny_model_path, tmp_path, monkeypatch):
    # Measured: ten SGD steps of plain distillation leave the summed onset KL at 0.86 of its start, with the onset
    # term at weight 20 at 0.53 (about 3x the fall).
    left = {}
    for weight in (0.0, 20.0):
        torch.manual_seed(0)
        trainer, rows = _onset_trainer(tiny_model_path, tmp_path, monkeypatch, span_onset_weight=20.0)
        batch = trainer._generate_and_score_completions(rows)
        trainer.args.span_onset_weight = weight
        kept = batch["rgsd_loss_mask"].bool()
        before = _reference_onset(trainer, batch)[0][kept].sum().item()
        optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.5)
        for _ in range(10):
            trainer._compute_loss(trainer.model, batch).backward()
            optimizer.step()
            optimizer.zero_grad()
        left[weight] = _reference_onset(trainer, batch)[0][kept].sum().item() / before
    assert 1 - left[20.0] > 2 * (1 - left[0.0]) > 0, left


def test_span_onset_refusals(tiny_model_path, tmp_path):
    from datasets import Dataset

    from trl_rubric import RGSDTrainer

    with pytest.raises(ValueError, match="span_onset_weight=0.5 act on the criteria named in span_criteria"):
        rgsd_test_config(tmp_path, span_onset_weight=0.5)
    with pytest.raises(ValueError, match="span_onset_weight is -1"):
        rgsd_test_config(tmp_path, span_onset_weight=-1, span_criteria=["key term"])
    args = rgsd_test_config(tmp_path, span_onset_weight=1.0, span_criteria=["key term"])
    rows = _rows(tag=r"rule:regex:\d+ hours")  # nothing the start of the term could be read from
    with pytest.raises(RubricDatasetError, match=r"row 0: column 'rubric': span_onset_weight needs a term"):
        RGSDTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(rows))


def test_rows_whose_term_starts_with_a_one_character_token_are_named_before_training(
    tiny_model_path, tmp_path, caplog
):
    from datasets import Dataset

    from trl_rubric import RGSDTrainer

    # In the test tokenizer "zqxv" starts with "z" (and " zqxv" with " "): too short to pull on; "doctor" with "do".
    args = rgsd_test_config(tmp_path, span_onset_weight=1.0, span_criteria=["key term"])
    rows = _rows(tag=r"rule:regex:\bdoctor\b")
    for index in (1, 3):
        rows[index] = _rows(1, tag=r"rule:regex:\bzqxv\b")[0]
    with caplog.at_level("WARNING", logger="trl_rubric.trainers.rgsd_spans"):
        RGSDTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(rows))
    (warning,) = [r.getMessage() for r in caplog.records if "onset" in r.getMessage()]
    assert "2 of 4 rows" in warning and "row 1: ['zqxv']; row 3: ['zqxv']" in warning, warning
    with pytest.raises(ValueError, match="4 of 4 rows have no term whose first token .* would change nothing"):
        RGSDTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(_rows(tag=r"rule:regex:\bzqxv\b")))


def test_a_training_run_with_the_onset_term_logs_both_probabilities(tiny_model_path, tmp_path, monkeypatch):
    trainer, _ = _onset_trainer(
        tiny_model_path, tmp_path, monkeypatch, n_rows=8, gradient_accumulation_steps=2, steps_per_generation=2
    )
    trainer.train()
    logs = [e for e in trainer.state.log_history if "rgsd/onset_teacher_prob" in e]
    assert logs and all(0 < e["rgsd/onset_teacher_prob"] < 1 and 0 < e["rgsd/onset_student_prob"] < 1 for e in logs)
