"""Dense process rewards (trl_rubric.trainers.process_reward) against plain references: step splitting, step rewards,
per-token group advantages, the batch a RubricGRPOTrainer trains on, and TRL's loss values and gradients on it."""

import hashlib
import statistics

import pytest
import torch
from datasets import Dataset

from trl_rubric.judges import RuleJudge
from trl_rubric.rubric import Rubric
from trl_rubric.trainers.process_reward import (
    ProcessRewards,
    process_advantages,
    split_steps,
    step_rewards,
    token_steps,
)
from trl_rubric.trainers.rubric_grpo import RubricGRPOConfig, RubricGRPOTrainer


def pieces(text, ends):
    return [text[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def test_splitters_cut_where_documented_and_cap_the_number_of_steps():
    text = "Rest first.\n\nDrink fluids. Then sleep!\n\n\nSee a doctor."
    assert pieces(text, split_steps(text, "paragraphs")) == [
        "Rest first.\n\n",
        "Drink fluids. Then sleep!\n\n\n",
        "See a doctor.",
    ]
    assert pieces(text, split_steps(text, "sentences")) == [
        "Rest first.\n\n",
        "Drink fluids. ",
        "Then sleep!\n\n\n",
        "See a doctor.",
    ]
    assert pieces("a\n\nb\nc", split_steps("a\n\nb\nc", "lines")) == ["a\n\n", "b\n", "c"]  # blank lines join
    assert pieces("### 1 x ### 2 y", split_steps("### 1 x ### 2 y", "markers")) == ["### 1 x ", "### 2 y"]
    assert pieces(text, split_steps(text, "sentences", max_steps=2)) == ["Rest first.\n\n", text[13:]]
    assert split_steps("", "lines") == [0]
    with pytest.raises(ValueError, match="process_step_splitter"):
        split_steps(text, "words")


def reference_token_steps(tokenizer, ids, step_ends):
    """The plain per-token loop: decode every prefix, move to the next step once past the current step's end."""
    out, step = [], 0
    for j in range(len(ids)):
        end = len(tokenizer.decode(list(ids[: j + 1]), skip_special_tokens=True))
        while step < len(step_ends) - 1 and end > step_ends[step]:
            step += 1
        out.append(step)
    return out


def test_token_steps_bisection_matches_the_per_token_loop(tiny_model_path):
    import random

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    rng = random.Random(0)
    texts = ["Rest first.\n\nDrink fluids. Then sleep!\n\n\nSee a doctor.", "é café\nnaïve — ok\n\nend", "", "one"]
    cases = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    for _ in range(20):  # random token soup with newlines in it
        cases.append([rng.choice([rng.randrange(len(tok)), *newline]) for _ in range(rng.randrange(1, 40))])
    for ids in cases:
        text = tok.decode(ids, skip_special_tokens=True)
        for splitter in ("lines", "sentences", "paragraphs"):
            ends = split_steps(text, splitter, max_steps=5)
            assert token_steps(tok, ids, ends) == reference_token_steps(tok, ids, ends), (ids, splitter)


def test_step_rewards_are_score_deltas_that_sum_to_the_final_score():
    assert step_rewards([0.2, 0.2, 0.9], truncated=False) == pytest.approx([0.2, 0.0, 0.7])
    assert sum(step_rewards([0.5, -0.25, 0.75], truncated=False)) == pytest.approx(0.75)
    assert step_rewards([0.2, None, 0.9], truncated=False) is None  # an unusable judge answer masks the trajectory
    assert step_rewards([0.2, 0.9], truncated=True) == [0.0, 0.0]  # over-long answers score 0, as in ExpRL


def reference_advantages(rewards, steps, g, length, scale):
    out = [[0.0] * length for _ in rewards]
    for start in range(0, len(rewards), g):
        pooled = [d for r in rewards[start : start + g] if r is not None for d in r]
        if not pooled:
            continue
        mean = statistics.fmean(pooled)
        std = statistics.stdev(pooled) if len(pooled) > 1 else 0.0
        for i in range(start, start + g):
            if rewards[i] is None:
                continue
            for t, k in enumerate(steps[i]):
                out[i][t] = (rewards[i][k] - mean) / (std + 1e-4) if scale else rewards[i][k] - mean
    return out


@pytest.mark.parametrize("scale", [True, False])
def test_per_token_advantages_match_a_plain_loop(scale):
    rewards = [[0.5, 0.25], [0.0, 1.0, -0.5], None, [0.75], [0.1, 0.1], None]
    steps = [[0, 0, 1], [0, 1, 1, 2], [0, 0], [0, 0, 0, 0], [0, 1], [0]]
    got = process_advantages(rewards, steps, num_generations=3, length=5, scale=scale)
    want = torch.tensor(reference_advantages(rewards, steps, 3, 5, scale))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert got[2].abs().sum() == 0 and got[5].abs().sum() == 0


def grpo_args(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        report_to="none",
        max_completion_length=24,
        per_device_train_batch_size=4,
        num_generations=2,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-2,
        judge_probe=False,
        seed=0,
        loss_type="grpo",
        process_rewards=True,
        process_step_splitter="lines",
    )
    return RubricGRPOConfig(**{**defaults, **kwargs})


RUBRIC = [
    {"text": "says rest", "weight": 2.0},
    {"text": "says water", "weight": 1.0},
    {"text": "says bad", "weight": -1.0},
]
ANSWERS = ["rest now\nwater too", "water\nrest\nbad", "bad words\nmore", "rest water"]


def word_judge():
    """Criterion "says X" is met when X is in the response; "bad" makes the judge fail (unknown) on prefixes that
    contain "words" (so that answer is masked)."""

    def resolver(criterion):
        word = criterion.text.split()[-1]
        return lambda response: None if "words" in response else word in response

    return RuleJudge(resolver=resolver)


def batch_for(trainer, answers):
    tok = trainer.processing_class
    text = tok.apply_chat_template([{"role": "user", "content": "q"}], add_generation_prompt=True, tokenize=False)
    prompt = [tok(text, add_special_tokens=False)["input_ids"]]
    rows = [tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for a in answers]
    rows[-1] = rows[-1][:-1]  # the last answer ran out of room: no EOS
    length = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (length - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
    prompt_ids = torch.tensor(prompt * len(rows))
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": ids,
        "completion_mask": mask,
        "advantages": torch.zeros(len(rows)),
        "num_items_in_batch": mask.sum(),
    }


@pytest.fixture
def trainer(tiny_model_path, tmp_path):
    rows = [{"prompt": "q", "rubric": RUBRIC}] * 4
    return RubricGRPOTrainer(
        model=tiny_model_path, args=grpo_args(tmp_path), train_dataset=Dataset.from_list(rows), judge=word_judge()
    )


def test_the_batch_gets_delta_rewards_per_step_masks_ungradable_answers_and_zeroes_truncated_ones(trainer):
    inputs = [{"prompt": "q", "rubric": RUBRIC}] * 4
    output = trainer.process_rewards.apply(trainer, inputs, batch_for(trainer, ANSWERS))
    rubric = Rubric.from_any(RUBRIC)
    tok = trainer.processing_class
    # Plain reference: grade each prefix by hand with the same rule, take deltas, normalise per group of 2.
    rewards, steps = [], []
    for i, answer in enumerate(ANSWERS):
        ends = split_steps(answer, "lines")
        scores = []
        for end in ends:
            prefix = answer[:end]
            verdicts = [None if "words" in prefix else c.text.split()[-1] in prefix for c in rubric]
            scores.append(None if None in verdicts else rubric.score(verdicts))
        rewards.append(step_rewards(scores, truncated=i == 3))
        ids = output["completion_ids"][i][: len(tok(answer, add_special_tokens=False)["input_ids"]) + (i != 3)]
        steps.append(reference_token_steps(tok, ids.tolist(), ends))
    assert rewards[0] == pytest.approx([2 / 3, 1 / 3]) and rewards[2] is None and rewards[3] == [0.0]
    expected = reference_advantages(rewards, steps, 2, output["completion_ids"].shape[1], scale=True)
    torch.testing.assert_close(output["advantages"], torch.tensor(expected), atol=1e-5, rtol=1e-5)
    assert output["completion_mask"][2].sum() == 0  # the ungradable answer is masked
    assert output["completion_mask"][0].sum() > 0 and output["num_items_in_batch"] == output["completion_mask"].sum()
    # Each step's tokens decode to that step's text.
    first = output["completion_ids"][0][
        [k == 0 for k in steps[0]] + [False] * (len(output["completion_ids"][0]) - len(steps[0]))
    ]
    assert tok.decode(first) == "rest now\n"


def test_trl_loss_on_per_token_advantages_matches_a_plain_policy_gradient_in_value_and_gradient(trainer):
    inputs = [{"prompt": "q", "rubric": RUBRIC}] * 4
    batch = trainer.process_rewards.apply(trainer, inputs, batch_for(trainer, ANSWERS))
    model = trainer.model
    model.train()
    model.zero_grad()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop; we call the loss outside it
    loss = trainer._compute_loss(model, batch)
    loss.backward()
    got_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    # Reference: GRPO at ratio 1 is -mean_i sum_t A_it logp_it m_it / sum_t m_it (values: -mean of A over tokens).
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    logits = model(input_ids=ids, attention_mask=attention).logits[:, batch["prompt_ids"].shape[1] - 1 : -1]
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    m, a = batch["completion_mask"].float(), batch["advantages"]
    ratio = torch.exp(logp - logp.detach())
    per_seq = (-(ratio * a) * m).sum(-1) / m.sum(-1).clamp(min=1.0)
    reference = per_seq.mean()
    reference.backward()
    want_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert loss.item() == pytest.approx(reference.item(), abs=1e-6)
    assert len(got_grads) == len(want_grads)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in got_grads)


def test_process_rewards_train_end_to_end_and_log_their_metrics(tiny_model_path, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    # Bias the random model towards newlines (steps) and its end token (answers that finish), as a policy would.
    bias = {(tok.eos_token_id,): 3.0, tuple(newline[-1:]): 4.0}
    rows = [{"prompt": f"q{i}", "rubric": RUBRIC} for i in range(4)]
    trainer = RubricGRPOTrainer(
        model=tiny_model_path,
        args=grpo_args(tmp_path, generation_kwargs={"sequence_bias": bias}, max_steps=3),
        train_dataset=Dataset.from_list(rows),
        judge=RuleJudge(resolver=lambda c: lambda r: hashlib.sha256(f"{c.text}|{r}".encode()).digest()[0] % 3 == 0),
    )
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    logged = [h for h in trainer.state.log_history if "process/steps_mean" in h]
    assert logged and max(h["process/steps_mean"] for h in logged) > 1  # answers were cut into several steps
    assert min(h["process/truncated_frac"] for h in logged) < 1
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters(), strict=True))


def test_bad_process_settings_are_refused_naming_the_field(tmp_path, tiny_model_path):
    with pytest.raises(ValueError, match="process_step_splitter"):
        grpo_args(tmp_path, process_step_splitter="words")
    with pytest.raises(ValueError, match="process_max_steps"):
        grpo_args(tmp_path, process_max_steps=0)
    with pytest.raises(ValueError, match="other reward_funcs"):
        RubricGRPOTrainer(
            model=tiny_model_path,
            reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
            args=grpo_args(tmp_path),
            train_dataset=Dataset.from_list([{"prompt": "q", "rubric": RUBRIC}] * 4),
            judge=word_judge(),
        )
    assert ProcessRewards("lines", 3).max_steps == 3


def test_prefixes_are_graded_by_the_http_judge_and_malformed_judge_output_masks_the_answers(
    tiny_model_path, tmp_path, monkeypatch
):
    from trl_rubric.testing.judge_server import FakeJudgeServer

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    rows = [{"prompt": "q", "rubric": RUBRIC}] * 4
    with FakeJudgeServer() as server:
        config = grpo_args(
            tmp_path, judge_model="fake-judge", judge_base_url=server.url, judge_max_retries=0, judge_timeout=30
        )
        trainer = RubricGRPOTrainer(model=tiny_model_path, args=config, train_dataset=Dataset.from_list(rows))
        answers = ["rest now\nwater too", "water\nrest\nbad", "rest", "rest water"]
        output = trainer.process_rewards.apply(trainer, rows, batch_for(trainer, answers))
        # One request per prefix of each finished answer (2 + 3 + 1 steps); the truncated last answer costs none.
        assert server.requests == 6
        # The server's rule (a criterion is met when its last word is in the text) gives the first answer 2/3 then 1.
        assert output["completion_mask"].sum(1).gt(0).all()
        assert output["advantages"][0, 0] != output["advantages"][2, 0]
        server.fault = "malformed"
        masked = trainer.process_rewards.apply(trainer, rows, batch_for(trainer, answers))
    assert masked["completion_mask"][:3].sum() == 0  # every graded answer is masked, none scored 0
    assert masked["completion_mask"][3].sum() > 0 and masked["advantages"].abs().sum() == 0


def test_a_step_whose_answers_are_all_masked_makes_no_update(tiny_model_path, tmp_path):
    rows = [{"prompt": f"q{i}", "rubric": RUBRIC} for i in range(4)]
    unknown = RuleJudge(resolver=lambda c: lambda response: None)  # the judge never knows
    trainer = RubricGRPOTrainer(
        model=tiny_model_path,
        args=grpo_args(tmp_path, min_graded_fraction=0.0, max_steps=1),
        train_dataset=Dataset.from_list(rows),
        judge=unknown,
    )
    trainer._generation_has_signal = True
    output = trainer.process_rewards.apply(trainer, rows, batch_for(trainer, ["a", "b", "c", "d"]))
    # Three answers masked, the fourth truncated (never sent to the judge): no update at all.
    assert trainer._generation_has_signal is False and output["completion_mask"][:3].sum() == 0


def test_one_graded_answer_keeps_the_step(trainer):
    trainer._generation_has_signal = True
    rows = [{"prompt": "q", "rubric": RUBRIC}] * 4
    trainer.process_rewards.apply(trainer, rows, batch_for(trainer, ["bad words", "bad words", "rest", "x"]))
    assert trainer._generation_has_signal is True  # "rest" was graded


def test_single_step_answers_get_grpo_sequence_advantages_on_every_token(trainer):
    rows = [{"prompt": "q", "rubric": RUBRIC}] * 4
    answers = ["rest water", "rest", "water bad", "rest bad"]
    batch = batch_for(trainer, answers)
    batch["completion_ids"][3, batch["completion_mask"][3].sum()] = trainer.processing_class.eos_token_id
    batch["completion_mask"][3, batch["completion_mask"][3].sum()] = 1  # let the last answer finish too
    output = trainer.process_rewards.apply(trainer, rows, batch)
    rubric = Rubric.from_any(RUBRIC)
    scores = torch.tensor([rubric.score([c.text.split()[-1] in a for c in rubric]) for a in answers])
    grouped = scores.view(-1, 2)
    expected = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).flatten()
    mask = output["completion_mask"].bool()
    for i in range(4):  # GRPO's advantage (TRL's formula, unbiased std), the same on each of the answer's tokens
        torch.testing.assert_close(output["advantages"][i][mask[i]], expected[i].expand(int(mask[i].sum())))
