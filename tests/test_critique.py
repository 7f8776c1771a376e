"""The critique teacher context: one judge call per rollout, cached; a failed critique is dropped and counted."""

import re

import pytest
import torch
from datasets import Dataset

from trl_rubric.critique import CritiqueContext, ReasonFirstContext, critique_messages
from trl_rubric.judges.llm import ChatReply, ChatRubricJudge, JudgeBackendError
from trl_rubric.rubric import Rubric
from trl_rubric.testing import make_rubric_rows, rgsd_test_config
from trl_rubric.trainers.rgsd import RGSDTrainer


class FakeCritic(ChatRubricJudge):
    """Critiques by echoing a marker; fails (not retryable) on draft answers whose question number is in `fail`."""

    def __init__(self, fail=(), **kwargs):
        super().__init__("fake-critic", max_retries=0, **kwargs)
        self.fail, self.requests = set(fail), []

    async def _chat(self, messages):
        user = messages[-1]["content"]
        self.requests.append(user)
        question = re.search(r"question \d+", user).group(0)
        if int(question.split()[-1]) in self.fail:
            raise JudgeBackendError("server said no", retryable=False)
        return ChatReply(f"CRITIQUE[{question}]: step 1 is correct; step 2 misses the fever warning.")


# Shorter than the kit's default run: one step of 6-token completions, no progress bar, no token clipping.
_SHORT_RUN = dict(max_completion_length=6, max_steps=1, disable_tqdm=True, token_clip=None)


def _config(tmp_path, **overrides):
    return rgsd_test_config(tmp_path / "out", **(_SHORT_RUN | overrides))


def test_critique_request_holds_the_question_rubric_and_draft():
    rubric = Rubric.from_any([{"text": "mentions fever", "weight": 2.0}, {"text": "mentions wrong", "weight": -1.0}])
    messages = critique_messages("question 1: explain fever", "a draft answer", rubric)
    user = messages[-1]["content"]
    assert "question 1: explain fever" in user and "a draft answer" in user and "mentions fever" in user
    assert "step by step" in messages[0]["content"]


def test_one_call_per_rollout_then_cached(tmp_path):
    rows = make_rubric_rows(3, conversational=True)
    critic = FakeCritic(cache_dir=str(tmp_path / "cache"))
    provider = CritiqueContext(critic)
    provider.prepare(rows, ["draft a", "draft b", "draft c"])
    assert len(critic.requests) == 3 and provider.calls == 3
    (context,) = provider.contexts(rows[1], "draft b")
    assert "CRITIQUE[question 1]" in context.prompt[-1]["content"] and context.weight == 1.0
    assert "draft b" not in context.prompt[-1]["content"]  # the teacher reads the critique, not the draft

    again = CritiqueContext(critic)
    again.prepare(rows, ["draft a", "draft b", "draft c"])
    assert len(critic.requests) == 3 and again.calls == 0  # every critique came from the cache


def test_failed_critique_gets_weight_zero_and_is_not_cached(tmp_path):
    rows = make_rubric_rows(2, conversational=True)
    critic = FakeCritic(fail={1}, cache_dir=str(tmp_path / "cache"))
    provider = CritiqueContext(critic)
    provider.prepare(rows, ["draft a", "draft b"])
    assert provider.failures == 1
    assert provider.contexts(rows[0], "draft a")[0].weight == 1.0
    assert provider.contexts(rows[1], "draft b")[0].weight == 0.0
    critic.fail = set()
    CritiqueContext(critic).prepare(rows, ["draft a", "draft b"])
    assert len(critic.requests) == 3  # the failure is asked again, the success is not


def test_failed_critiques_are_left_out_of_the_loss_and_counted(tiny_model_path, tmp_path):
    dataset = Dataset.from_list(make_rubric_rows(4, conversational=True))
    critic = FakeCritic(fail={2})
    trainer = RGSDTrainer(
        tiny_model_path, args=_config(tmp_path), train_dataset=dataset, teacher_context=CritiqueContext(critic)
    )
    trainer.model.train()
    batch = trainer._generate_and_score_completions(list(dataset))
    assert len(critic.requests) == 4
    assert trainer._metrics["train"]["rgsd/teacher_context_failed"][-1] == 1
    assert batch["rgsd_loss_mask"][2].sum() == 0 and batch["rgsd_loss_mask"][[0, 1, 3]].sum() > 0
    tok = trainer.processing_class
    teacher = tok.decode(batch["teacher_prompt_ids"][0][batch["teacher_prompt_mask"][0].bool()])
    student = tok.decode(batch["prompt_ids"][0][batch["prompt_mask"][0].bool()])
    assert "CRITIQUE[question 0]" in teacher and "CRITIQUE" not in student

    # the dropped row contributes nothing: whatever its teacher sees, the loss is the same
    loss = trainer._compute_loss(trainer.model, batch).item()
    scrambled = dict(batch)
    scrambled["teacher_prompt_ids"] = batch["teacher_prompt_ids"].clone()
    scrambled["teacher_prompt_ids"][2] = torch.randint(10, 200, scrambled["teacher_prompt_ids"][2].shape)
    assert trainer._compute_loss(trainer.model, scrambled).item() == pytest.approx(loss, rel=1e-6)
    scrambled["teacher_prompt_ids"][0] = torch.randint(10, 200, scrambled["teacher_prompt_ids"][0].shape)
    assert trainer._compute_loss(trainer.model, scrambled).item() != pytest.approx(loss, rel=1e-6)


def test_critique_provider_trains_one_step(tiny_model_path, tmp_path):
    dataset = Dataset.from_list(make_rubric_rows(4, conversational=True))
    trainer = RGSDTrainer(
        tiny_model_path, args=_config(tmp_path), train_dataset=dataset, teacher_context=CritiqueContext(FakeCritic())
    )
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_critique_needs_an_llm_judge():
    from trl_rubric.judges.rule import RuleJudge

    with pytest.raises(TypeError, match="needs an LLM judge"):
        CritiqueContext(RuleJudge())


# ---------------------------------------------------------------- RCSD reason-first


def _rows_with_reference(n=4):
    rows = make_rubric_rows(n, conversational=True)
    for i, row in enumerate(rows):
        row["reference"] = f"reference answer {i}"
    return rows


def test_reason_first_teacher_sees_reference_rubric_and_analysis_written_once_per_row(tmp_path):
    rows = _rows_with_reference(3)
    critic = FakeCritic(cache_dir=str(tmp_path / "cache"))
    provider = ReasonFirstContext(critic)
    provider.prepare(rows)
    assert len(critic.requests) == 3
    (request,) = [r for r in critic.requests if "question 1:" in r]  # the calls run concurrently, in any order
    assert "reference answer 1" in request and "mentions" in request
    (context,) = provider.contexts(rows[1])
    user = context.prompt[-1]["content"]
    rendered = Rubric.from_any(rows[1]["rubric"]).render("json")
    assert "reference answer 1" in user and rendered in user and "CRITIQUE[question 1]" in user
    assert user.index("reference answer 1") < user.index(rendered) < user.index("CRITIQUE[question 1]")
    provider.contexts(rows[2])
    provider.prepare(rows)
    assert len(critic.requests) == 3  # kept per row: no new call for rows already analysed
    fresh = ReasonFirstContext(critic)
    fresh.prepare(rows)
    assert len(critic.requests) == 3 and fresh.calls == 0  # and cached on disk across runs


def test_reason_first_failure_drops_the_row_and_is_asked_again(tmp_path):
    rows = _rows_with_reference(2)
    critic = FakeCritic(fail={0})
    provider = ReasonFirstContext(critic)
    assert provider.contexts(rows[0])[0].weight == 0.0 and provider.failures == 1
    critic.fail = set()
    assert provider.contexts(rows[0])[0].weight == 1.0


def test_reason_first_trains_one_step(tiny_model_path, tmp_path):
    dataset = Dataset.from_list(_rows_with_reference(4))
    trainer = RGSDTrainer(
        tiny_model_path,
        args=_config(tmp_path),
        train_dataset=dataset,
        teacher_context=ReasonFirstContext(FakeCritic()),
    )
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


@pytest.mark.parametrize("loss_type", ["grpo", "luspo", "dr_grpo", "dapo"])
def test_a_failed_critique_leaves_the_loss_of_the_other_rows(tiny_model_path, tmp_path, loss_type):
    # Reference: the same batch with the dropped row taken out; the loss must not shrink by the dropped share
    dataset = Dataset.from_list(make_rubric_rows(4, conversational=True))
    trainer = RGSDTrainer(
        tiny_model_path,
        args=_config(tmp_path, loss_type=loss_type),
        train_dataset=dataset,
        teacher_context=CritiqueContext(FakeCritic(fail={2})),
    )
    batch = trainer._generate_and_score_completions(list(dataset))
    keep = torch.tensor([0, 1, 3])
    survivors = {
        k: v[keep] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.size(0) == 4 else v for k, v in batch.items()
    }
    with torch.no_grad():
        loss = trainer._compute_loss(trainer.model, batch)
        reference = trainer._compute_loss(trainer.model, survivors)
    assert reference > 0
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=0)


class CountingCritic(FakeCritic):
    """Counts calls and how many run at once."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.in_flight = self.most_at_once = 0

    async def _chat(self, messages):
        import asyncio

        self.in_flight += 1
        self.most_at_once = max(self.most_at_once, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        return await super()._chat(messages)


def test_reason_first_start_up_length_check_calls_no_judge_and_batches_are_prepared_at_once(tiny_model_path, tmp_path):
    dataset = Dataset.from_list(_rows_with_reference(4))
    critic = CountingCritic(max_concurrency=8)
    provider = ReasonFirstContext(critic)
    sizes = []
    prepare = provider.prepare
    provider.prepare = lambda rows, completions=None: (sizes.append(len(rows)), prepare(rows, completions))[1]
    trainer = RGSDTrainer(
        tiny_model_path,
        args=_config(tmp_path, max_teacher_prompt_length=4096),
        train_dataset=dataset,
        teacher_context=provider,
    )
    assert critic.requests == [] and sizes == []  # the length check at start-up paid for no analysis
    batch = trainer._generate_and_score_completions(list(dataset))
    assert len(critic.requests) == 4 and critic.most_at_once == 4  # one call per row, all at once
    assert sizes and sizes[0] == len(batch["prompt_ids"])
    teacher = trainer.processing_class.decode(batch["teacher_prompt_ids"][0], skip_special_tokens=True)
    assert "CRITIQUE[question" in teacher


def test_reason_first_start_up_length_check_still_refuses_a_prompt_too_long_without_the_analysis(
    tiny_model_path, tmp_path
):
    dataset = Dataset.from_list(_rows_with_reference(2))
    critic = CountingCritic()
    with pytest.raises(ValueError, match="train_dataset row 0.*max_teacher_prompt_length=20"):
        RGSDTrainer(
            tiny_model_path,
            args=_config(tmp_path, max_teacher_prompt_length=20),
            train_dataset=dataset,
            teacher_context=ReasonFirstContext(critic),
        )
    assert critic.requests == []


@pytest.mark.parametrize("penalties", ["show", "omit"])
def test_reason_first_honours_teacher_penalties_in_the_view_and_the_analysis_request(
    tiny_model_path, tmp_path, penalties
):
    rows = _rows_with_reference(1)
    critic = FakeCritic()
    provider = ReasonFirstContext(critic)  # left to follow the config
    RGSDTrainer(
        tiny_model_path,
        args=_config(tmp_path, teacher_penalties=penalties),
        train_dataset=Dataset.from_list(rows),
        teacher_context=provider,
    )
    assert provider.penalties == penalties
    (context,) = provider.contexts(rows[0])
    (request,) = critic.requests
    shown = penalties == "show"
    assert ("mentions wrong" in context.prompt[-1]["content"]) is shown
    assert ("mentions wrong" in request) is shown
    assert "mentions however" in context.prompt[-1]["content"] and "mentions however" in request
    explicit = ReasonFirstContext(FakeCritic(), penalties="omit")
    assert "mentions wrong" not in explicit.contexts(rows[0])[0].prompt[-1]["content"]


def test_critique_and_reason_first_keep_one_text_per_rubric_for_the_same_prompt():
    a, b = _rows_with_reference(1)[0], _rows_with_reference(1)[0]
    b["rubric"] = [{"text": "mentions kittens", "weight": 2.0}]
    critic = FakeCritic()
    provider = ReasonFirstContext(critic)
    provider.prepare([a, b])
    assert len(critic.requests) == 2
    assert "mentions kittens" in provider.contexts(b)[0].prompt[-1]["content"]
    assert "mentions kittens" not in provider.contexts(a)[0].prompt[-1]["content"]
    assert len(critic.requests) == 2

    class RubricEcho(FakeCritic):
        async def _chat(self, messages):
            reply = await super()._chat(messages)
            return ChatReply(reply.text + (" KITTENS" if "kittens" in messages[-1]["content"] else " PLAIN"))

    critique = CritiqueContext(RubricEcho())
    critique.prepare([a, b], ["same draft", "same draft"])
    assert "KITTENS" in critique.contexts(b, "same draft")[0].prompt[-1]["content"]
    assert "PLAIN" in critique.contexts(a, "same draft")[0].prompt[-1]["content"]
    assert len(critique.judge.requests) == 2  # each (prompt, rubric, draft) was prepared: no call from contexts
