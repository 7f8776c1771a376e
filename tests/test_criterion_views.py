"""Criterion-wise teacher views (`teacher_context="criteria"`): teacher k sees the question and criterion group k only,
and the K teachers' per-token losses combine as the multi-teacher code says (checked against a plain reference)."""

import math

import pytest
import torch
from datasets import Dataset

from trl_rubric.criterion_views import criterion_groups, criterion_views, render_criteria
from trl_rubric.rubric import GOOD_ANSWER_AVOIDS, Criterion, Rubric
from trl_rubric.teacher import DEFAULT_TEACHER_PROMPT_TEMPLATE
from trl_rubric.teacher_context import CriterionViewsContext, build_teacher_context

RUBRIC = [
    {"text": "Names the vitamin zinc", "weight": 5.0, "category": "essential", "title": None, "tags": []},
    {"text": "Gives a numbered list", "weight": 2.0, "category": "important", "title": None, "tags": []},
    {"text": "Advises seeing a doctor", "weight": 3.0, "category": "essential", "title": None, "tags": []},
    {"text": "Promises a guaranteed cure", "weight": -4.0, "category": "pitfall", "title": None, "tags": []},
]
TEXTS = [c["text"] for c in RUBRIC]
ROW = {"prompt": "How do I treat a cold?", "rubric": RUBRIC}


def texts_in(prompt) -> set[str]:
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    return {t for t in TEXTS if t in text}


def test_each_teacher_sees_its_criterion_and_no_other():
    provider = CriterionViewsContext(num_contexts=4, penalties="show")
    contexts = provider.contexts(ROW)
    assert [texts_in(c.prompt) for c in contexts] == [{t} for t in TEXTS]
    for c in contexts:
        assert c.prompt.startswith("How do I treat a cold?") and c.weight == 1.0


def test_penalties_omitted_leave_the_penalty_to_no_teacher_and_pad_with_weight_zero():
    provider = CriterionViewsContext(num_contexts=4, penalties="omit")
    contexts = provider.contexts(ROW)
    assert [texts_in(c.prompt) for c in contexts] == [{TEXTS[0]}, {TEXTS[1]}, {TEXTS[2]}, set()]
    assert [c.weight for c in contexts] == [1.0, 1.0, 1.0, 0.0]
    assert contexts[3].prompt == ROW["prompt"]  # the padding view is the student's own prompt


def test_category_grouping_and_weights_from_criterion_weights():
    provider = CriterionViewsContext(num_contexts=3, grouping="category", weighting="weight", penalties="show")
    contexts = provider.contexts(ROW)
    assert [texts_in(c.prompt) for c in contexts] == [{TEXTS[0], TEXTS[2]}, {TEXTS[1]}, {TEXTS[3]}]
    assert [c.weight for c in contexts] == [8.0, 2.0, 4.0]


def test_polarity_grouping_shows_goals_and_penalties_to_different_teachers():
    provider = CriterionViewsContext(num_contexts=2, grouping="polarity", penalties="show")
    goals, avoids = provider.contexts(ROW)
    assert texts_in(goals.prompt) == set(TEXTS[:3]) and texts_in(avoids.prompt) == {TEXTS[3]}
    # The penalty is listed as something a good answer avoids, never as a goal
    assert f"{GOOD_ANSWER_AVOIDS}\n1. Promises a guaranteed cure" in avoids.prompt


def test_more_groups_than_teachers_merge_neighbours_so_every_criterion_is_shown_once():
    groups = criterion_groups(Rubric.from_any(RUBRIC), "criterion", "show", 3)
    assert [[c.text for c in g.criteria] for g in groups] == [TEXTS[:2], [TEXTS[2]], [TEXTS[3]]]
    views = criterion_views(ROW["prompt"], RUBRIC, DEFAULT_TEACHER_PROMPT_TEMPLATE, num_contexts=1, penalties="show")
    assert len(views) == 1 and texts_in(views[0][0]) == set(TEXTS)


@pytest.mark.parametrize("style", ["numbered", "weighted", "json"])
def test_a_group_of_penalties_renders_as_the_whole_rubric_renders_them(style):
    whole = Rubric.from_any(RUBRIC).render(style)
    alone = render_criteria([Criterion("Promises a guaranteed cure", -4.0, "pitfall")], style)
    if style == "json":
        assert '"good_answer": "avoids"' in alone and '"weight": -4.0' in alone
    else:
        line = alone.splitlines()[1]
        assert alone.splitlines()[0] == GOOD_ANSWER_AVOIDS
        assert line[line.index(" ") :] in whole  # the same line text as in the whole rubric, numbered from 1


def test_chat_prompt_gets_the_group_in_its_last_user_turn():
    row = {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Cold?"}],
        "rubric": RUBRIC,
    }
    contexts = CriterionViewsContext(num_contexts=4).contexts(row)
    assert contexts[0].prompt[0] == {"role": "system", "content": "Be brief."}
    assert texts_in(contexts[1].prompt) == {TEXTS[1]}


def test_bad_settings_are_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="teacher_penalties='show'"):
        CriterionViewsContext(grouping="polarity", penalties="omit")
    with pytest.raises(ValueError, match="criterion_grouping"):
        CriterionViewsContext(grouping="axis")
    with pytest.raises(ValueError, match="num_teacher_contexts"):
        CriterionViewsContext(num_contexts=0)
    with pytest.raises(ValueError, match="must contain"):
        CriterionViewsContext(template="{prompt} only")
    from trl_rubric.testing import rgsd_test_config

    with pytest.raises(ValueError, match="criterion_grouping"):
        rgsd_test_config(tmp_path, teacher_context="criteria", criterion_grouping="axis")
    with pytest.raises(ValueError, match="criterion_view_weights"):
        rgsd_test_config(tmp_path, teacher_context="criteria", criterion_view_weights="points")
    with pytest.raises(ValueError, match="n-gram"):
        rgsd_test_config(tmp_path, teacher_context="criteria", teacher_no_repeat_ngram_size=4)


def test_config_builds_the_criteria_provider(tmp_path):
    from trl_rubric.testing import rgsd_test_config

    config = rgsd_test_config(
        tmp_path, teacher_context="criteria", num_teacher_contexts=3, criterion_grouping="category",
        criterion_view_weights="weight", teacher_penalties="show",
    )  # fmt: skip
    provider = build_teacher_context(config)
    assert isinstance(provider, CriterionViewsContext)
    assert (provider.num_contexts, provider.grouping, provider.weighting, provider.penalties) == (
        3, "category", "weight", "show",
    )  # fmt: skip


# ---------------------------------------------------------------- in the trainer, on the tiny model


def _rows(n=4):
    # Distinct criterion words per row, so each teacher's prompt can be checked for exactly its own criteria
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo"]
    rows = []
    for i in range(n):
        picked = words[i : i + 2 + i % 2]
        rubric = [{"text": f"mentions {w}", "weight": float(1 + j), "category": None, "title": None, "tags": []}
                  for j, w in enumerate(picked)]  # fmt: skip
        rows.append({"prompt": f"question {i}: explain it briefly", "rubric": rubric})
    return rows


def _jsd(s_logps, t_logps, beta=0.5):
    m = (1 - beta) * s_logps.exp() + beta * t_logps.exp()
    kl = lambda p, q: (p.exp() * (p - q)).sum(-1)  # noqa: E731
    return beta * kl(t_logps, m.log()) + (1 - beta) * kl(s_logps, m.log())


def _completion_logps(model, prompt_ids, completion_ids):
    ids = torch.cat([prompt_ids, completion_ids])[None]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, prompt_ids.numel() - 1 : -1].float()
    return torch.log_softmax(logits, -1)


def test_trainer_combines_the_criterion_teachers_as_a_weighted_mean_of_their_losses(
    tiny_model_path, tmp_path, monkeypatch
):
    from trl_rubric import losses
    from trl_rubric.testing import rgsd_test_config
    from trl_rubric.trainers.rgsd import RGSDTrainer

    rows = _rows()
    config = rgsd_test_config(
        tmp_path, teacher_context="criteria", num_teacher_contexts=3, criterion_view_weights="weight"
    )
    trainer = RGSDTrainer(tiny_model_path, args=config, train_dataset=Dataset.from_list(rows))
    batch = trainer._generate_and_score_completions(rows)
    tokenizer = trainer.processing_class
    t_ids, t_mask = batch["teacher_prompt_ids"], batch["teacher_prompt_mask"]
    assert t_ids.shape[:2] == (4, 3)
    # Each teacher's prompt holds its own criterion and no other; rows of 2 criteria get a weight-0 third view
    for b, row in enumerate(rows):
        texts = [c["text"] for c in row["rubric"]]
        for k in range(3):
            seen = tokenizer.decode(t_ids[b, k][t_mask[b, k].bool()])
            assert [t for t in texts if t in seen] == (texts[k : k + 1])
        expected = [c["weight"] for c in row["rubric"]] + [0.0] * (3 - len(texts))
        torch.testing.assert_close(batch["teacher_context_weights"][b], torch.tensor(expected) / sum(expected))

    seen = {}
    real = losses.reduce_token_loss

    def spy(per_token, mask, *args, **kwargs):
        seen["per_token"], seen["mask"] = per_token.detach(), mask.detach()
        return real(per_token, mask, *args, **kwargs)

    monkeypatch.setattr(losses, "reduce_token_loss", spy)
    assert torch.isfinite(trainer._compute_loss(trainer.model, batch))

    model = trainer.model.eval()
    checked = 0
    for b in range(len(rows)):
        completion = batch["completion_ids"][b][batch["completion_mask"][b].bool()]
        n = completion.numel()
        student = _completion_logps(model, batch["prompt_ids"][b][batch["prompt_mask"][b].bool()], completion)
        reference = torch.zeros(n)
        for k in range(3):
            teacher = _completion_logps(model, t_ids[b, k][t_mask[b, k].bool()], completion)
            reference += batch["teacher_context_weights"][b, k] * _jsd(student, teacher)
        loss_tokens = seen["mask"][b, :n].bool()
        torch.testing.assert_close(seen["per_token"][b, :n][loss_tokens], reference[loss_tokens], atol=2e-4, rtol=1e-3)
        checked += int(loss_tokens.sum())
    assert checked > 0


def test_criterion_teachers_train_under_the_sgsd_gate(tiny_model_path, tmp_path):
    from trl_rubric.testing import rgsd_test_config
    from trl_rubric.trainers.rgsd import RGSDTrainer

    def reward(prompts, completions, **kwargs):
        return [float(len(c) % 2) for c in completions]

    config = rgsd_test_config(
        tmp_path, teacher_context="criteria", num_teacher_contexts=2, teacher_combine="sgsd_gate",
        distillation_support="sampled_token", distillation_beta=1.0, loss_type="grpo", max_steps=1,
    )  # fmt: skip
    trainer = RGSDTrainer(tiny_model_path, args=config, train_dataset=Dataset.from_list(_rows()), reward_funcs=reward)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "rgsd/gate_active_frac" in h]
    assert logged and all(math.isfinite(h["rgsd/loss"]) for h in logged)
