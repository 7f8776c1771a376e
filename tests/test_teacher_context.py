"""Teacher contexts: what each provider shows the teacher, presets by name, and one training step per provider."""

import json
import logging

import pytest
import torch
from datasets import Dataset

from trl_rubric.rubric import Rubric
from trl_rubric.teacher import DEFAULT_TEACHER_PROMPT_TEMPLATE, build_teacher_prompt
from trl_rubric.teacher_context import (
    TEACHER_CONTEXT_PRESETS,
    ReferenceContext,
    RubricContext,
    SkillsContext,
    TeacherContextProvider,
    build_teacher_context,
    fill_template,
    load_skill_bank,
)
from trl_rubric.testing import make_rubric_rows, rgsd_test_config
from trl_rubric.trainers.rgsd import RGSDConfig, RGSDTrainer

# Shorter than the kit's default run: one step of 6-token completions, no progress bar.
_SHORT_RUN = dict(max_completion_length=6, max_steps=1, disable_tqdm=True)


def _config(tmp_path, **overrides):
    return rgsd_test_config(tmp_path / "out", **(_SHORT_RUN | overrides))


def _rows(n=4, conversational=True):
    rows = make_rubric_rows(n, conversational=conversational)
    for i, row in enumerate(rows):
        row["reference"] = f"reference answer {i}: fever dose {{prompt}} warning"
    return rows


# ---------------------------------------------------------------- providers, no model


@pytest.mark.parametrize("conversational", [False, True])
def test_rubric_provider_is_byte_identical_to_build_teacher_prompt(conversational):
    provider = build_teacher_context(
        RGSDConfig(output_dir="out", use_cpu=True, bf16=False, rubric_render_style="weighted")
    )
    assert isinstance(provider, TeacherContextProvider) and isinstance(provider, RubricContext)
    for row in _rows(6, conversational):
        (context,) = provider.contexts(row)
        assert context.prompt == build_teacher_prompt(
            row["prompt"], row["rubric"], DEFAULT_TEACHER_PROMPT_TEMPLATE, "weighted"
        )
        assert context.weight == 1.0


def test_reference_provider_shows_the_reference_and_not_the_rubric():
    provider = build_teacher_context(
        RGSDConfig(output_dir="out", use_cpu=True, bf16=False, teacher_context="reference")
    )
    row = _rows(1, conversational=False)[0]
    (context,) = provider.contexts(row)
    assert context.prompt.startswith(row["prompt"] + "\n\n")
    # inserted as it is: the `{prompt}` inside the reference is not substituted again
    assert row["reference"] in context.prompt
    assert all(c["text"] not in context.prompt for c in row["rubric"])


def test_rubric_reference_provider_shows_both_with_the_rubric_as_json():
    config = RGSDConfig(
        output_dir="out",
        use_cpu=True,
        bf16=False,
        teacher_context="rubric+reference",
        rubric_render_style="json",
        teacher_penalties="show",
    )
    row = _rows(1, conversational=True)[0]
    (context,) = build_teacher_context(config).contexts(row)
    user = context.prompt[-1]["content"]
    assert user.startswith(row["prompt"][-1]["content"])
    assert row["reference"] in user
    rendered = Rubric.from_any(row["rubric"]).render("json")
    assert rendered in user
    json.loads(rendered)  # the teacher sees a JSON list, weights included
    assert user.index(row["reference"]) < user.index(rendered)


@pytest.mark.parametrize("context, style", [("rubric", "numbered"), ("rubric+reference", "json")])
def test_providers_leave_penalties_out_of_the_teacher_view_when_told(context, style):
    config = RGSDConfig(
        output_dir="out", use_cpu=True, bf16=False, teacher_context=context, rubric_render_style=style,
        teacher_penalties="omit",
    )  # fmt: skip
    provider = build_teacher_context(config)
    assert provider.penalties == "omit"
    rows = [row for row in _rows(6, conversational=False) if any(c["weight"] < 0 for c in row["rubric"])]
    assert rows  # the kit's rows carry penalties
    for row in rows:
        (context_,) = provider.contexts(row)
        kept = [c for c in row["rubric"] if c["weight"] >= 0]
        assert Rubric.from_any(kept).render(style) in context_.prompt
        assert all(c["text"] not in context_.prompt for c in row["rubric"] if c["weight"] < 0)
        if context == "rubric":
            assert context_.prompt == build_teacher_prompt(
                row["prompt"], row["rubric"], DEFAULT_TEACHER_PROMPT_TEMPLATE, style, penalties="omit"
            )


def test_unknown_teacher_penalties_is_refused_by_name():
    with pytest.raises(ValueError, match="teacher_penalties is 'hide'; expected one of"):
        RGSDConfig(output_dir="out", use_cpu=True, bf16=False, teacher_penalties="hide")
    for provider in (RubricContext, ReferenceContext):
        with pytest.raises(ValueError, match="teacher_penalties is 'hide'"):
            provider(penalties="hide")


def test_fill_template_substitutes_in_one_pass():
    out = fill_template(
        "{prompt}|{reference}|{rubric}|{other}", prompt="P {rubric}", reference="R {prompt}", rubric="C"
    )
    assert out == "P {rubric}|R {prompt}|C|{other}"


def test_reference_template_without_its_placeholder_is_refused():
    with pytest.raises(ValueError, match=r"must contain \{reference\}"):
        ReferenceContext(template="{prompt} only")
    with pytest.raises(ValueError, match=r"must contain \{rubric\}"):
        ReferenceContext(template="{prompt} {reference}", with_rubric=True)


def test_unknown_teacher_context_is_refused_by_name():
    with pytest.raises(ValueError, match="teacher_context is 'rubrik'; expected one of"):
        RGSDConfig(output_dir="out", use_cpu=True, bf16=False, teacher_context="rubrik")


def test_rcsd_preset_sets_the_paper_loss_and_keeps_explicit_choices(caplog):
    with caplog.at_level(logging.WARNING):
        config = RGSDConfig(
            output_dir="out", use_cpu=True, bf16=False, teacher_context="rcsd", token_clip_mode="scale"
        )
    assert (config.distillation_beta, config.distillation_support, config.distillation_top_k) == (0.0, "topk", 20)
    assert (config.distillation_top_k_source, config.distillation_top_k_tail) == ("teacher", False)
    assert (config.rubric_render_style, config.token_clip) == ("json", 0.05)
    assert config.token_clip_mode == "scale"  # set by the user: kept, with a warning
    assert "keeping 'scale'" in caplog.text
    assert TEACHER_CONTEXT_PRESETS["rcsd"].settings["token_clip_mode"] == "per_entry"
    assert build_teacher_context(config).name == "rubric+reference"


def test_rcsd_preset_uses_the_per_entry_clip():
    assert (
        RGSDConfig(output_dir="out", use_cpu=True, bf16=False, teacher_context="rcsd").token_clip_mode == "per_entry"
    )


# ---------------------------------------------------------------- trainer: errors before training


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_reference_names_the_row_before_training(tiny_model_path, tmp_path, value):
    rows = _rows(4)
    rows[2]["reference"] = value
    with pytest.raises(ValueError, match="train_dataset row 2: column 'reference' is"):
        RGSDTrainer(
            tiny_model_path, args=_config(tmp_path, teacher_context="reference"), train_dataset=Dataset.from_list(rows)
        )


def test_missing_reference_column_is_named(tiny_model_path, tmp_path):
    rows = make_rubric_rows(4, conversational=True)
    with pytest.raises(ValueError, match="train_dataset has no 'answer' column"):
        RGSDTrainer(
            tiny_model_path,
            args=_config(tmp_path, teacher_context="rubric+reference", reference_column="answer"),
            train_dataset=Dataset.from_list(rows),
        )


@pytest.mark.parametrize("penalties", ["show", "omit"])
@pytest.mark.parametrize("context", ["rubric", "rubric+reference"])
def test_rubric_of_penalties_only_names_the_row_before_training(tiny_model_path, tmp_path, context, penalties):
    # Refused by the rubric itself whatever teacher_penalties says, so "omit" can never leave the teacher an empty
    # rubric (the next test shows what omit does keep)
    rows = _rows(4)
    rows[2]["rubric"] = [{"text": "mentions wrong", "weight": -2.0, "category": "pitfall", "title": None, "tags": []}]
    with pytest.raises(
        ValueError, match="train_dataset row 2: column 'rubric': rubric has no criterion with a positive"
    ):
        RGSDTrainer(
            tiny_model_path,
            args=_config(tmp_path, teacher_context=context, teacher_penalties=penalties),
            train_dataset=Dataset.from_list(rows),
        )


@pytest.mark.parametrize("context", ["rubric", "rubric+reference"])
def test_omit_keeps_only_the_positive_criteria_of_a_mostly_penalty_rubric(tiny_model_path, tmp_path, context):
    rows = _rows(4)
    rows[2]["rubric"] = [
        {"text": "mentions wrong", "weight": -2.0, "category": "pitfall", "title": None, "tags": []},
        {"text": "mentions lies", "weight": -5.0, "category": "pitfall", "title": None, "tags": []},
        {"text": "mentions kittens", "weight": 1.0, "category": "essential", "title": None, "tags": []},
    ]
    trainer = RGSDTrainer(
        tiny_model_path,
        args=_config(tmp_path, teacher_context=context, teacher_penalties="omit"),
        train_dataset=Dataset.from_list(rows),
    )
    (view,) = trainer._teacher_prompts([rows[2]])
    text = view[-1]["content"]
    assert "mentions kittens" in text and "mentions wrong" not in text and "mentions lies" not in text


def test_long_reference_teacher_prompt_names_the_row(tiny_model_path, tmp_path):
    rows = _rows(4)
    rows[1]["reference"] = "fever " * 300
    with pytest.raises(ValueError, match="train_dataset row 1: the teacher prompt"):
        RGSDTrainer(
            tiny_model_path,
            args=_config(tmp_path, teacher_context="reference", max_teacher_prompt_length=200),
            train_dataset=Dataset.from_list(rows),
        )


# ---------------------------------------------------------------- trainer: one step per provider


def _decoded(tokenizer, ids, mask):
    return tokenizer.decode(ids[mask.bool()])


@pytest.mark.parametrize(
    "context, shows_reference, shows_rubric",
    [("rubric", False, True), ("reference", True, False), ("rubric+reference", True, True)],
)
def test_teacher_sees_its_context_and_the_student_never_does(
    tiny_model_path, tmp_path, context, shows_reference, shows_rubric
):
    dataset = Dataset.from_list(_rows(4))
    config = _config(tmp_path, teacher_context=context, teacher_penalties="show")
    trainer = RGSDTrainer(tiny_model_path, args=config, train_dataset=dataset)
    batch = trainer._generate_and_score_completions(list(dataset))
    tok = trainer.processing_class
    for i, row in enumerate(dataset):
        teacher = _decoded(tok, batch["teacher_prompt_ids"][i], batch["teacher_prompt_mask"][i])
        student = _decoded(tok, batch["prompt_ids"][i], batch["prompt_mask"][i])
        expected = trainer.teacher_context.contexts(row)[0].prompt
        assert teacher == tok.apply_chat_template(expected, tokenize=False, add_generation_prompt=True)
        for criterion in row["rubric"]:
            assert (criterion["text"] in teacher) == shows_rubric
            assert criterion["text"] not in student
        assert (row["reference"] in teacher) == shows_reference
        assert row["reference"] not in student


@pytest.mark.parametrize("context", ["rubric", "rubric+reference"])
def test_trainer_teacher_prompts_hold_no_penalty_when_penalties_are_omitted(tiny_model_path, tmp_path, context):
    dataset = Dataset.from_list(_rows(4))
    args = _config(tmp_path, teacher_context=context, teacher_penalties="omit")
    trainer = RGSDTrainer(tiny_model_path, args=args, train_dataset=dataset)
    batch = trainer._generate_and_score_completions(list(dataset))
    tok = trainer.processing_class
    penalties_seen = 0
    for i, row in enumerate(dataset):
        teacher = _decoded(tok, batch["teacher_prompt_ids"][i], batch["teacher_prompt_mask"][i])
        expected = trainer.teacher_context.contexts(row)[0].prompt
        assert teacher == tok.apply_chat_template(expected, tokenize=False, add_generation_prompt=True)
        for criterion in row["rubric"]:
            assert (criterion["text"] in teacher) == (criterion["weight"] >= 0)
            penalties_seen += criterion["weight"] < 0
        assert "A good answer avoids:" not in teacher
    assert penalties_seen > 0


@pytest.mark.parametrize("context", ["rubric", "reference", "rubric+reference", "rcsd"])
def test_one_training_step_per_provider(tiny_model_path, tmp_path, context):
    args = _config(tmp_path, teacher_context=context, token_clip=None)
    trainer = RGSDTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(_rows(4)))
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    (log,) = [e for e in trainer.state.log_history if "rgsd/divergence" in e]
    assert log["rgsd/divergence"] > 0 and torch.isfinite(torch.tensor(log["loss"]))


# ---------------------------------------------------------------- skills (K teachers per rollout)

SKILLS = [
    {"skill": "check the dose before naming a drug", "mistake": "naming a dose without the weight"},
    {"skill": "list fever warning signs", "mistake": "ignoring a fever above 40"},
    {"skill": "explain heart risk factors plainly"},
    {"text": "summarise the evidence in one sentence"},
]


def _bank(tmp_path):
    path = tmp_path / "skills.jsonl"
    path.write_text("\n".join(json.dumps(s) for s in SKILLS) + "\n", encoding="utf-8")
    return path


def test_skill_bank_renders_a_mistake_as_sgsd_does(tmp_path):
    path = tmp_path / "skills.jsonl"
    row = {"skill": "state the units", "mistake": "mixing mg and g", "instead": "convert first", "why": "doses differ"}
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    expected = "state the units\nDon't: mixing mg and g\nInstead: convert first\nWhy this matters: doses differ"
    assert load_skill_bank(path) == [expected]


def test_skill_bank_reads_skill_mistake_pairs_and_names_a_bad_line(tmp_path):
    skills = load_skill_bank(_bank(tmp_path))
    assert skills[0] == "check the dose before naming a drug\nDon't: naming a dose without the weight"
    assert skills[3] == "summarise the evidence in one sentence"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"mistake": "no skill"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: expected a non-empty 'text' or 'skill'"):
        load_skill_bank(bad)
    with pytest.raises(ValueError, match="holds 4 skills"):
        SkillsContext(_bank(tmp_path), num_contexts=5)


def test_bm25_skills_rank_the_matching_skill_first_with_softmax_weights(tmp_path):
    provider = SkillsContext(_bank(tmp_path), num_contexts=2)
    contexts = provider.contexts({"prompt": "my child has a fever, what are the warning signs?"})
    assert len(contexts) == 2
    assert "list fever warning signs" in contexts[0].prompt
    assert "list fever warning signs" not in contexts[1].prompt
    assert contexts[0].weight > contexts[1].weight
    assert sum(c.weight for c in contexts) == pytest.approx(1.0)
    _, scores = provider.retrieve("my child has a fever, what are the warning signs?")
    expected = torch.softmax(torch.tensor(scores, dtype=torch.float64), 0).tolist()
    assert [c.weight for c in contexts] == pytest.approx(expected)


def test_skills_use_the_users_embedding_function(tmp_path):
    vocab = ["dose", "fever", "heart", "evidence"]

    def embed(texts):
        return [[float(word in t) + 1e-3 for word in vocab] for t in texts]

    provider = SkillsContext(_bank(tmp_path), num_contexts=1, embed=embed)
    (context,) = provider.contexts({"prompt": [{"role": "user", "content": "what about the heart?"}]})
    assert "explain heart risk factors plainly" in context.prompt[-1]["content"]
    assert context.weight == 1.0


def test_skills_teachers_see_their_skill_and_the_student_never_does(tiny_model_path, tmp_path):
    dataset = Dataset.from_list(_rows(4))
    args = _config(tmp_path, teacher_context="skills", skill_bank=str(_bank(tmp_path)), num_teacher_contexts=2)
    trainer = RGSDTrainer(tiny_model_path, args=args, train_dataset=dataset)
    batch = trainer._generate_and_score_completions(list(dataset))
    assert batch["teacher_prompt_ids"].shape[:2] == (4, 2)
    tok = trainer.processing_class
    skills = load_skill_bank(_bank(tmp_path))
    for i, row in enumerate(dataset):
        student = _decoded(tok, batch["prompt_ids"][i], batch["prompt_mask"][i])
        contexts = trainer.teacher_context.contexts(row)
        for k, context in enumerate(contexts):
            teacher = _decoded(tok, batch["teacher_prompt_ids"][i, k], batch["teacher_prompt_mask"][i, k])
            assert teacher == tok.apply_chat_template(context.prompt, tokenize=False, add_generation_prompt=True)
            assert sum(s in teacher for s in skills) == 1
        assert not any(s.split("\n")[0] in student for s in skills)
        torch.testing.assert_close(batch["teacher_context_weights"][i], torch.tensor([c.weight for c in contexts]))


def _verifier(prompts, completions, **kwargs):
    return [float(i % 2) for i in range(len(prompts))]


@pytest.mark.parametrize("context", ["skills", "sgsd"])
def test_one_training_step_with_skills(tiny_model_path, tmp_path, context):
    # "scale" keeps a gradient on tokens above tau, which the tiny random model has many of
    args = _config(
        tmp_path,
        teacher_context=context,
        skill_bank=str(_bank(tmp_path)),
        num_teacher_contexts=3,
        token_clip_mode="scale",
        gate_confidence_threshold=0.0,  # the tiny model's teachers differ from it by ~0.01 nats, under the 0.05 default
    )
    assert args.teacher_combine == ("sgsd_gate" if context == "sgsd" else "mean")
    rewards = _verifier if context == "sgsd" else None
    trainer = RGSDTrainer(tiny_model_path, reward_funcs=rewards, args=args, train_dataset=Dataset.from_list(_rows(4)))
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    (log,) = [e for e in trainer.state.log_history if "rgsd/teacher_token_ratio" in e]
    assert log["rgsd/teacher_token_ratio"] > 3.0  # three teachers, each reading a longer prompt than the student
    if context == "sgsd":
        assert 0 < log["rgsd/gate_active_frac"] <= 1


def test_default_teacher_omits_penalties_and_the_rcsd_preset_shows_the_whole_rubric():
    assert RGSDConfig(output_dir="out", use_cpu=True, bf16=False).teacher_penalties == "omit"
    rcsd = RGSDConfig(output_dir="out", use_cpu=True, bf16=False, teacher_context="rcsd")
    assert rcsd.teacher_penalties == "show" and build_teacher_context(rcsd).penalties == "show"
