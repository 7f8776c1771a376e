"""Degeneration flags (repeated lines, copied rubric text, meta-talk) against hand-labelled answers, and their place in
the eval/gap metrics and reports."""

from __future__ import annotations

import itertools
import random

import pytest

from trl_rubric.evaluation.degeneration import (
    DEGENERATION_FLAGS,
    META_TALK_PATTERNS,
    _loops,
    _units,
    copied_rubric_fraction,
    copied_rubric_spans,
    copies_rubric,
    degeneration_flags,
    degeneration_rates,
    degeneration_spans,
    meta_talk,
    meta_talk_spans,
    repeated_line_spans,
    repeats_line,
)

# Criteria of the SmolLM2 health and science world (trl_rubric.real.world), as the teacher saw them.
RUBRIC = [
    {"text": "Advises seeing a doctor if the symptoms persist or get worse.", "weight": 2.0, "title": "doctor"},
    {"text": "Names one warning sign that needs emergency care right away.", "weight": 2.0, "title": "urgent"},
    {"text": "Gives the answer as a numbered list (1., 2., 3.).", "weight": 2.0, "title": "numbered steps"},
    {"text": "Gives an everyday example that starts with 'For example,'.", "weight": 2.0, "title": "example"},
    {"text": "Mentions aloe vera.", "weight": 1.0, "title": "key term"},
]

CLEAN_LIST = (
    "1. Crack the eggs into a bowl.\n2. Whisk them with a pinch of salt.\n"
    "3. Cook on low heat, stirring gently.\n4. Take them off the heat while still soft."
)

# (answer, repeats_line, copies_rubric, meta_talk): labelled by hand. The first ones are quoted in issue 19 and
# DESIGN.md ("How RGSD degenerates on a 135M model") or were written by SmolLM2-135M with the rubric in view.
LABELLED = [
    ("Tips:\n7. Use a different sentence.\n8. Use a different sentence.", True, False, False),
    ("1.1. 2.1 3.1", True, False, False),
    ("Steps:\n1.\n2.\n3.", True, False, False),
    (
        "1. How to make scrambled eggs creamy. 2. What to make scrambled eggs. 3. What to eat scrambled eggs.",
        True,
        False,
        False,
    ),
    ("Your answer should contain a bullet point.", False, False, True),
    ("Here's your answer:\nRest and drink fluids.", False, False, True),
    ("Rest and drink fluids.\n\nThis answer meets the requirements.", False, False, True),
    ("Rest, drink fluids and sleep. That is it, in under 60 words.", False, False, True),
    (
        "1. Gives an everyday example that starts with 'For example,'.\n2. Mentioning the rock cycle.\n"
        "3. Mentioning the rock cycle.",
        True,
        True,
        False,
    ),
    ("1. **In the year 2023**\n2. **In the year 2023**", True, False, False),
    ("- Drink plenty of water every day.\n* drink plenty of water every day", True, False, False),
    ("Rest as much as you can. Drink water. Rest as much as you can.", True, False, False),
    ("The seeds grow towards the growth of the growth of the growth of the light.", True, False, False),
    ("No no no no no, never do that.", True, False, False),
    # SmolLM2 teacher answer on the everyday-instructions world: one-word items repeat.
    ("1. Start a vegetable garden!\n2. Sunday!\n3. Saturday!\n4. 1st!\n5. 1st!\n6. 1st!", True, False, False),
    ("1. Yes, you need a tetanus shot.\n2. Not mentioning any other requirements.", False, False, True),
    ("Please provide the requested information.", False, False, True),
    # SmolLM2 student, full demo on the everyday-instructions world: the criterion "Uses the word ..." as a plan.
    ("1. I'll include a list of the steps\n2. I'll use the word \"baking\" twice.", False, False, True),
    # GRPO paid by the rule judge on SmolLM2: forms of empty fields, and stacked "Subject:" lines (docs/benchmarks.md,
    # "Against GRPO at equal wall-clock"); none was flagged before the form checks.
    ("1. Electrical:\n\n2. Human factor:\n\n3. Weather:\n\n4. Other explanation:", True, False, False),
    ("- Plan:\n    - Date:\n    - Time:\n    - Occasion:\n    - App:", True, False, False),
    ("- Steps:\n- Save: $4 each month\n- Budget:\n- Total: $10\n- Cost:\n- Time: Monday", True, False, False),
    (
        "Subject: Please Don't Tell\nSubject: After the Interview\nSubject: HR\nSubject: Thank You\nHi Ann,",
        True,
        False,
        False,
    ),
    # Forms that are not empty: headings with their lists under them, a label with its value, three stacked lines.
    ("Ingredients:\n- 2 eggs\n- Salt\nInstructions:\n1. Whisk.\n2. Cook slowly.", False, False, False),
    ("Overnight Oats:\nIngredients:\n* Oats\n* Honey\n\nInstructions:\n1. Mix.\n2. Chill.", False, False, False),
    ("1. Yoga stretches:\na. Cobra pose\nb. Child's pose\n2. Walking:\n- Ten minutes a day", False, False, False),
    ("1. Budget: $50\n2. Date: Saturday\n3. Time: 6 pm\n4. Guests: six friends", False, False, False),
    ("Morning:\n- Walk.\nAfternoon:\n- Read.\nEvening:\n- Sleep early.", False, False, False),
    ("Tip: rest.\nTip: drink water.\nTip: see a doctor if it gets worse.", False, False, False),
    # Clean answers that must not be flagged.
    (
        "Without water, plants cannot survive. It's a fundamental requirement for any living organism.",
        False,
        False,
        False,
    ),  # fmt: skip
    ("Adults have higher nutritional requirements for iron during pregnancy.", False, False, False),
    (
        "This list includes 10 reasons why plastic lasts:\n1. It resists water.\n2. Microbes cannot digest it.",
        False,
        False,
        False,
    ),  # fmt: skip
    ("It is very, very cold. Wear a coat, a hat and gloves.", False, False, False),
    (CLEAN_LIST, False, False, False),
    ("Aloe vera gel cools sunburned skin. For example, keep a bottle in the fridge.", False, False, False),
    ("See a doctor if it hurts for more than a week, and go to the emergency room if you faint.", False, False, False),
    ("A doctor should be consulted if the symptoms persist or get worse.", False, False, False),
    ("1. Rest.\n2. Drink fluids.\n3.", False, False, False),  # cut off at the token limit: one empty marker
    ("**Tips:**\n- Rest.\n**Tips:**\n- Drink.", False, False, False),  # a repeated one-word heading
    ("Day 1:\n- Hike.\nDay 2:\n- Swim.\nDay 3:\n- Rest.", False, False, False),  # distinct short headings
    ("Eat more vegetables.\nEat more fruit.", False, False, False),  # parallel, short, distinct
    ("Many people use the word loosely; a cold is not the flu.", False, False, False),  # no quoted word announced
    ("1. Boil water.\n2. Add the pasta.\n3. Stir after 2. Then drain it.", False, False, False),
    ("---\nRest well.\n---", False, False, False),
    # Everyday advice that reads like meta-talk to a looser pattern (SmolLM2 answers, flagged before the fix).
    ("1. Use a recipe online, and follow the instructions.\n2. Stir well.", False, False, False),
    ("6. Always stay calm and follow instructions.\n7. Keep your balance.", False, False, False),
    ("3. This is a natural physical response to the yawn, which is common.", False, False, False),
    ("1. The most commonly requested sleep needs are 8-10 hours.\n2. Most adults need 7-9.", False, False, False),
    ("Choose a venue that can hold your requested number of guests.", False, False, False),
    # "this response" pointing back at the body's response the answer already named.
    ("The immune system learns to respond to pollen. This response is called an allergy.", False, False, False),
    ("Exercise calms your body's stress response.\n4. This response includes movement.", False, False, False),
    # ... and what still counts.
    ("This answer follows all the instructions above.", False, False, True),
    ("Here it is, and it follows every rule you gave.", False, False, True),
    ("This is a short, clear answer to your question.", False, False, True),
    ("Sleep 8 hours.\n\nIn this response, I've included the full sentence.", False, False, True),  # nothing before
    ("Stress raises the heart rate, a normal response.\n\nThis response should be short.", False, False, True),
    ("A normal response to stress. This response above is correct.", False, False, True),
    ("Please ensure the response is formatted as requested.", False, False, True),
    ("Add your answer with the requested format.", False, False, True),
]


@pytest.mark.parametrize(("answer", "repeats", "copies", "meta"), LABELLED)
def test_flags_match_hand_labels(answer, repeats, copies, meta):
    flags = degeneration_flags(answer, RUBRIC)
    assert (flags.repeats_line, flags.copies_rubric, flags.meta_talk) == (repeats, copies, meta)
    assert flags.degenerate == (repeats or copies or meta)
    assert flags.to_dict()["degenerate"] == flags.degenerate


def test_list_markers_are_stripped_before_lines_are_compared():
    # The same item under new numbers is a repeat; without marker stripping "7. x" and "8. x" differ.
    assert repeats_line("7. Use a different sentence.\n8. Use a different sentence.")
    assert repeats_line("1) Rest in a quiet room\n2) rest in a quiet room!")
    assert repeats_line("a) Rest in a quiet room\nb) Rest in a quiet room")
    assert repeats_line("• Rest in a quiet room\n• Rest in a quiet room")
    assert not repeats_line("7. Use a different sentence.\n8. Use a shorter word.")


def _reference_loops(words):
    """A phrase of length p repeated three times in a row (or a word five times), by slicing."""
    for p in range(1, 9):
        reps = 5 if p == 1 else 3
        for i in range(len(words) - reps * p + 1):
            if all(words[i + k * p : i + (k + 1) * p] == words[i : i + p] for k in range(reps)):
                return True
    return False


def test_phrase_loops_match_a_slicing_reference():
    rng = random.Random(2)
    for _ in range(500):
        words = tuple(rng.choice("ab") for _ in range(rng.randint(0, 14)))
        if len(words) // 3 >= 1:
            assert _loops(words) == _reference_loops(words), words


def test_near_repeats_can_be_turned_off():
    eggs = "1. What to make scrambled eggs.\n2. What to eat scrambled eggs."
    assert repeats_line(eggs)
    assert not repeats_line(eggs, near_min_words=0)


def test_one_trailing_empty_item_is_not_a_list_of_empty_items():
    assert not repeats_line("1. Rest.\n2. Drink fluids.\n3.")
    assert repeats_line("1. Rest.\n2.\n3.")
    assert not repeats_line("1. Rest.\n2.\n3.", min_empty_items=0)


def _reference_repeats(answer, min_words=3, near_min_words=5):
    """Plain pairwise comparison of every two units (the fast path uses masked-key sets)."""
    units, empty = _units(answer)
    if empty >= 2 or any(_loops(u) for u in units):
        return True
    if any(len(u) < min_words and units.count(u) >= 3 for u in units):
        return True
    for a, b in itertools.combinations(units, 2):
        if a == b and len(a) >= min_words:
            return True
        if len(a) == len(b) >= near_min_words and sum(x != y for x, y in zip(a, b, strict=True)) <= 1:
            return True
    return False


def test_repeats_line_matches_a_pairwise_reference():
    rng = random.Random(0)
    vocab = ["rest", "drink", "water", "sleep", "early", "doctor", "the", "a", "eggs", "slowly"]
    for _ in range(300):
        lines = []
        for i in range(rng.randint(1, 5)):
            words = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 7)))
            lines.append(f"{rng.choice(['', f'{i + 1}. ', '- ', '* '])}{words}.")
        answer = "\n".join(lines)
        assert repeats_line(answer) == _reference_repeats(answer), answer


def _reference_copied_fraction(answer, criteria, min_words=5):
    """Longest common run of words by the textbook quadratic table."""
    import re

    def words(t):
        return re.findall(r"[^\W_]+", t.lower())

    a = words(answer)
    best = 0.0
    for text in criteria:
        c = words(text)
        longest = 0
        table = [[0] * (len(a) + 1) for _ in range(len(c) + 1)]
        for i in range(1, len(c) + 1):
            for j in range(1, len(a) + 1):
                if c[i - 1] == a[j - 1]:
                    table[i][j] = table[i - 1][j - 1] + 1
                    longest = max(longest, table[i][j])
        need = min(min_words, len(c))
        if len(c) >= 3 and longest >= need:
            best = max(best, longest / len(c))
    return best


def test_copied_fraction_matches_a_longest_common_run_reference():
    rng = random.Random(1)
    texts = [c["text"] for c in RUBRIC]
    pool = " ".join(texts).lower().replace(".", "").split() + ["rest", "water", "sleep"]
    for _ in range(200):
        answer = " ".join(rng.choice(pool) for _ in range(rng.randint(3, 30)))
        if rng.random() < 0.5:  # paste part of a criterion in the middle
            words = rng.choice(texts).split()
            k = rng.randint(1, len(words))
            answer += " " + " ".join(words[:k]) + " and more"
        assert copied_rubric_fraction(answer, texts) == pytest.approx(_reference_copied_fraction(answer, texts))


def test_a_short_criterion_counts_only_when_pasted_whole():
    short = ["Ends with 'Happy gardening!'.", "Mentions mowing high."]
    assert copies_rubric("1. Ends with 'Happy gardening!'.\n2. Mow on Saturday.", short)
    assert copies_rubric("It mentions mowing high.", short)
    assert not copies_rubric("Mow high on Saturday. Happy gardening!", short)
    assert not copies_rubric("It ends with happy news.", short)


def test_a_key_term_from_a_criterion_is_not_copying():
    assert copied_rubric_fraction("Put aloe vera on it.", RUBRIC) == 0.0
    assert not copies_rubric("1. Rest.\n2. See a doctor.\n3. For example, drink tea.", RUBRIC)


def test_copy_threshold_is_a_parameter():
    answer = "A doctor should be consulted if the symptoms persist or get worse."  # 7 of 11 criterion words
    assert copied_rubric_fraction(answer, RUBRIC) == pytest.approx(7 / 11)
    assert not copies_rubric(answer, RUBRIC)
    assert copies_rubric(answer, RUBRIC, threshold=0.6)
    assert not copies_rubric(answer, RUBRIC, threshold=0.6, min_words=8)
    with pytest.raises(ValueError, match="copy threshold"):
        copies_rubric(answer, RUBRIC, threshold=0)


def test_rubric_forms_are_all_read():
    from trl_rubric.rubric import Rubric

    pasted = "Gives the answer as a numbered list (1., 2., 3.)."
    import json

    forms = (RUBRIC, Rubric.from_any(RUBRIC), [c["text"] for c in RUBRIC], RUBRIC[2]["text"], json.dumps(RUBRIC))
    for rubric in forms:
        assert copies_rubric(pasted, rubric)
    assert not copies_rubric(pasted, None)


def test_only_the_answer_is_checked_not_the_reasoning_and_messages_are_read():
    thinking = "<think>The requirements say: be short. Be short.</think>Rest and drink water."
    assert not degeneration_flags(thinking, RUBRIC).degenerate
    assert degeneration_flags("<think>ok</think>Here is your answer: rest.", RUBRIC).meta_talk
    messages = [{"role": "assistant", "content": "1.1. 2.1 3.1"}]
    assert degeneration_flags(messages, RUBRIC).repeats_line


def test_meta_talk_patterns_are_a_parameter():
    assert meta_talk("It meets every requirement.")
    assert not meta_talk("It meets every requirement.", patterns=[r"\bbanana\b"])
    assert meta_talk("I like a banana.", patterns=[("fruit", r"\bbanana\b")])
    assert all(isinstance(name, str) and isinstance(regex, str) for name, regex in META_TALK_PATTERNS)


def test_rates_are_shares_of_answers():
    answers = [CLEAN_LIST, "1.1. 2.1 3.1", "Your answer should be short.", "Gives the answer as a numbered list."]
    rates = degeneration_rates(answers, [RUBRIC] * 4)
    assert rates == {"repeats_line": 0.25, "copies_rubric": 0.25, "meta_talk": 0.25, "degenerate": 0.75, "n": 4}
    assert degeneration_rates([], [])["degenerate"] is None
    with pytest.raises(ValueError, match="3 answers and 1 rubrics"):
        degeneration_rates(["a", "b", "c"], [RUBRIC])


def test_a_training_step_of_completions_is_cheap():
    import time

    answer = "\n".join(
        f"{i}. Drink some water and rest in a quiet room for a while to feel better." for i in range(12)
    )
    start = time.perf_counter()
    degeneration_rates([answer] * 64, [RUBRIC] * 64)
    # 64 long answers against 5 criteria: well under a second even on a loaded 2-core machine (about 30 ms idle).
    assert time.perf_counter() - start < 2.0


def test_eval_metrics_carry_degeneration_and_per_criterion_rates(tmp_path):
    from trl_rubric.evaluation import evaluate, write_eval_outputs
    from trl_rubric.judges.base import Grade, RubricJudge

    class MetEverySecond(RubricJudge):
        async def _grade(self, prompt, response, rubric):
            return Grade.from_verdicts(rubric, [i % 2 == 0 for i in range(len(rubric))])

    rows = [{"prompt": f"q{i}", "rubric": RUBRIC} for i in range(4)]
    answers = [CLEAN_LIST, "1.1. 2.1 3.1", CLEAN_LIST, "Here is your answer: rest."]
    result = evaluate(None, rows, MetEverySecond(), generate_fn=lambda ps: answers, progress=False, n_bootstrap=0)
    assert result.metrics.degeneration["degenerate"] == 0.5
    assert result.metrics.degeneration["repeats_line"] == 0.25
    assert result.metrics.by_criterion["doctor"]["met_rate"] == 1.0
    assert result.metrics.by_criterion["urgent"]["met_rate"] == 0.0
    flags = [row["degeneration"]["degenerate"] for row in result.examples]
    assert sorted(flags) == [False, False, True, True]
    files = write_eval_outputs(result, tmp_path, plots=False)
    report = open(files["report"]).read()
    assert "speaks of requirements" in report and "By criterion" in report and "| urgent | 4 | 0.0% |" in report
    import json

    saved = json.load(open(files["results"]))
    assert saved["degeneration"]["degenerate"] == 0.5 and "numbered steps" in saved["by_criterion"]


def test_gap_reports_the_teachers_own_degeneration(tmp_path):
    import json

    from trl_rubric.evaluation import conditioning_gap, write_gap_outputs
    from trl_rubric.judges import RuleJudge

    rubric = [{"text": "Says that the kettle boils water in about three minutes.", "weight": 1.0,
               "title": "kettle", "tags": ["rule:contains:kettle"]}]  # fmt: skip

    def generate(prompts):
        # The teacher's view holds the rubric: this "model" pastes it, as SmolLM2's teacher did; the student answers.
        return [
            "1. Says that the kettle boils water in about three minutes.\n2. It meets the requirements."
            if "kettle boils" in str(p)
            else "Fill it and switch it on."
            for p in prompts
        ]

    rows = [{"prompt": f"How do I boil water, way {i}?", "rubric": rubric} for i in range(3)]
    result = conditioning_gap(None, rows, RuleJudge(), n_samples=None, generate_fn=generate, n_bootstrap=0,
                              progress=False)  # fmt: skip
    rates = result.to_dict()["degeneration"]
    assert rates["without_rubric"]["degenerate"] == 0.0
    assert rates["with_rubric"]["copies_rubric"] == 1.0 and rates["with_rubric"]["meta_talk"] == 1.0
    assert result.to_dict()["with_rubric"]["by_criterion"]["kettle"]["met_rate"] == 1.0
    assert [r["degenerate_with_rubric"] for r in result.table()] == [True] * 3
    files = write_gap_outputs(result, tmp_path, plots=False)
    report = open(files["report"]).read()
    assert "| copies rubric text | 0.0% | 100.0% |" in report
    assert json.load(open(files["results"]))["degeneration"]["with_rubric"]["degenerate"] == 1.0


def test_trainer_log_hook_appends_prefixed_rates_and_reduces_over_processes():
    from collections import defaultdict

    from trl_rubric.evaluation.degeneration import log_degeneration

    metrics = defaultdict(list)
    answers = [CLEAN_LIST, "1.1. 2.1 3.1"]
    log_degeneration(metrics, "rgsd", answers, [RUBRIC, RUBRIC])
    assert metrics["rgsd/degenerate"] == [0.5] and metrics["rgsd/repeats_line"] == [0.5]
    assert metrics["rgsd/copies_rubric"] == [0.0] and metrics["rgsd/meta_talk"] == [0.0]
    # Two processes: the other one saw two clean answers; rates are over the whole batch.
    seen = []

    def reduce(counts):
        seen.append(counts)
        return [c + o for c, o in zip(counts, [2.0, 0.0, 0.0, 0.0, 0.0], strict=True)]

    log_degeneration(metrics, "rubric_grpo", answers, [RUBRIC, RUBRIC], reduce=reduce)
    assert seen == [[2.0, 1.0, 0.0, 0.0, 1.0]]
    assert metrics["rubric_grpo/degenerate"] == [0.25]


# ---------------------------------------------------------------- training logs


def _recording(monkeypatch, module):
    """Wrap the trainer module's `log_degeneration` to see what each step checked and logged."""
    import trl_rubric.evaluation.degeneration as real

    calls = []

    def record(metrics, prefix, answers, rubrics, reduce=None, **kwargs):
        calls.append({"answers": [a for a in answers], "rubrics": rubrics})
        flags = real.log_degeneration(metrics, prefix, answers, rubrics, reduce, **kwargs)
        calls[-1]["logged"] = metrics[f"{prefix}/degenerate"][-1]
        return flags

    monkeypatch.setattr(module, "log_degeneration", record)
    return calls


def test_rgsd_logs_degeneration_of_each_steps_completions_against_their_rubrics(
    tiny_model_path, tmp_path, monkeypatch
):
    from datasets import Dataset

    import trl_rubric.trainers.rgsd as rgsd
    import trl_rubric.trainers.rgsd_rollouts as rgsd_rollouts
    from trl_rubric.testing import make_rubric_rows, rgsd_test_config

    calls = _recording(monkeypatch, rgsd_rollouts)
    rows = make_rubric_rows(8, conversational=True)
    trainer = rgsd.RGSDTrainer(tiny_model_path, args=rgsd_test_config(tmp_path / "out"),
                               train_dataset=Dataset.from_list(rows))  # fmt: skip
    trainer.train()
    logs = [e for e in trainer.state.log_history if "rgsd/divergence" in e]
    assert calls and all(k in logs[0] for k in ("rgsd/degenerate", "rgsd/repeats_line", "rgsd/copies_rubric",
                                                 "rgsd/meta_talk"))  # fmt: skip
    texts = {c["text"] for r in rows for c in r["rubric"]}
    for call in calls:
        # The checks see the student's completions (text) with the rubric of the row each came from.
        assert all(isinstance(a, str) for a in call["answers"]) and len(call["answers"]) == len(call["rubrics"])
        assert all({c["text"] for c in rubric} <= texts for rubric in call["rubrics"])
        assert call["logged"] == degeneration_rates(call["answers"], call["rubrics"])["degenerate"]


def test_rubric_grpo_logs_degeneration_under_its_prefix(tiny_model_path, tmp_path, monkeypatch):
    from datasets import Dataset

    import trl_rubric.trainers.rubric_grpo as rubric_grpo
    from trl_rubric.judges import RuleJudge
    from trl_rubric.testing import make_rubric_rows

    calls = _recording(monkeypatch, rubric_grpo)
    args = rubric_grpo.RubricGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none",
                                        max_completion_length=8, per_device_train_batch_size=4, num_generations=2,
                                        max_steps=1, logging_steps=1, save_strategy="no", judge_probe=False)  # fmt: skip
    rows = make_rubric_rows(4, seed=1)
    trainer = rubric_grpo.RubricGRPOTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(rows),
                                            judge=RuleJudge(resolver=lambda c: (lambda r: True)))  # fmt: skip
    trainer.train()
    logs = [e for e in trainer.state.log_history if "judge/calls" in e]
    assert "rubric_grpo/degenerate" in logs[0] and "rubric_grpo/meta_talk" in logs[0]
    assert len(calls) == 1 and len(calls[0]["answers"]) == 4
    assert logs[0]["rubric_grpo/degenerate"] == pytest.approx(calls[0]["logged"])


def test_eval_cli_prints_and_saves_degeneration_and_per_criterion_rates(tiny_model_path, tmp_path, capsys):
    import json

    from trl_rubric.cli import main

    rows = [{"prompt": f"Say something {i}.", "rubric": [
        {"text": "Mentions the word the.", "weight": 1.0, "title": "says the", "tags": ["rule:contains:the"]},
        {"text": "Stays under forty words.", "weight": 1.0, "title": "short", "tags": ["rule:max_words:40"]}]}
        for i in range(3)]  # fmt: skip
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    code = main(["eval", "--model_name_or_path", tiny_model_path, "--dataset_name", str(data),
                 "--max_completion_length", "4", "--output_dir", str(out), "--bootstrap_samples", "0",
                 "--judge_backend", "rule", "--progress", "false", "--plots", "false"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "degenerate answers" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    answers = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    expected = degeneration_rates([a["response"] for a in answers], [r["rubric"] for r in rows])
    assert results["degeneration"] == expected
    assert set(results["by_criterion"]) == {"says the", "short"}
    assert results["by_criterion"]["short"]["met_rate"] == 1.0  # 4 tokens are never 40 words
    assert all(set(a["degeneration"]) == {"repeats_line", "copies_rubric", "meta_talk", "degenerate"} for a in answers)


def test_gap_cli_prints_and_saves_the_teachers_degeneration(tiny_model_path, tmp_path, capsys):
    import json

    from trl_rubric.cli import main

    rows = [{"prompt": f"Say something {i}.", "rubric": [
        {"text": "Mentions the word the.", "weight": 1.0, "title": "says the", "tags": ["rule:contains:the"]}]}
        for i in range(2)]  # fmt: skip
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "gap"
    code = main(["gap", "--model_name_or_path", tiny_model_path, "--dataset_name", str(data), "--n_samples", "2",
                 "--max_completion_length", "4", "--output_dir", str(out), "--bootstrap_samples", "0",
                 "--judge_backend", "rule", "--progress", "false", "--plots", "false", "--n_token_views", "0"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "with rubric (the teacher)" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    pairs = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    for view in ("without_rubric", "with_rubric"):
        expected = degeneration_rates([p[view]["response"] for p in pairs], [p[view]["criteria"] for p in pairs])
        assert results["degeneration"][view] == expected
    assert "Degeneration" in (out / "report.md").read_text()


@pytest.mark.parametrize("policy", ["keep", "drop"])
def test_rgsd_drops_degenerate_answers_from_the_distillation_loss_only_when_asked(
    tiny_model_path, tmp_path, monkeypatch, policy
):
    from datasets import Dataset

    import trl_rubric.evaluation.degeneration as real
    import trl_rubric.trainers.rgsd as rgsd
    import trl_rubric.trainers.rgsd_rollouts as rgsd_rollouts
    from trl_rubric.testing import make_rubric_rows, rgsd_test_config

    # The tiny model writes random tokens; the checks are shown a repeated list for the first answer of each batch
    # and a plain sentence for the others, so the real detector decides which rows are degenerate.
    looped = "1. Drink water.\n2. Drink water.\n3. Drink water."

    def shown(metrics, prefix, answers, rubrics, reduce=None, **kwargs):
        answers = [looped] + ["Rest and drink fluids."] * (len(answers) - 1)
        return real.log_degeneration(metrics, prefix, answers, rubrics, reduce, **kwargs)

    monkeypatch.setattr(rgsd_rollouts, "log_degeneration", shown)
    rows = make_rubric_rows(4)
    args = rgsd_test_config(tmp_path / "out", degenerate_rollouts=policy)
    trainer = rgsd.RGSDTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(rows))
    trainer.model.train()
    batch = trainer._generate_and_score_completions(rows)
    kept = batch["rgsd_loss_mask"].bool()
    completion = batch["completion_mask"].bool()
    assert kept[1:].equal(completion[1:])  # clean answers are distilled either way
    if policy == "drop":
        assert not kept[0].any() and completion[0].any()
        assert trainer._metrics["train"]["rgsd/degenerate_dropped"] == [1]
        assert batch["rgsd_num_items_in_batch"].item() == completion[1:].sum().item()
    else:
        assert kept[0].equal(completion[0])
        assert "rgsd/degenerate_dropped" not in trainer._metrics["train"]
    assert trainer._metrics["train"]["rgsd/teacher_context_failed"] == [0]  # a drop is not a failed context


def test_config_refuses_an_unknown_degenerate_rollouts_policy():
    from trl_rubric.trainers.rgsd import RGSDConfig

    with pytest.raises(ValueError, match="degenerate_rollouts"):
        RGSDConfig(output_dir="/tmp/x", use_cpu=True, bf16=False, degenerate_rollouts="mask")


# ---------------------------------------------------------------- spans (what degenerate_rollouts="unlikelihood" hits)


def _span_texts(answer, spans):
    return [answer[s:e] for s, e in spans]


def test_spans_of_a_repeated_item_are_its_later_occurrences():
    answer = "1. Drink water.\n2. Drink water.\n3. Rest.\n4. Drink water."
    second = answer.index("Drink water.", 5)
    third = answer.index("Drink water.", second + 1)
    assert repeated_line_spans(answer) == [(second, second + 12), (third, third + 12)]
    eggs = "1. How to make scrambled eggs creamy. 2. What to make scrambled eggs. 3. What to eat scrambled eggs."
    start = eggs.index("What to eat")
    assert repeated_line_spans(eggs) == [(start, len(eggs))]  # the near-repeat, not the item it repeats


def test_spans_of_an_empty_list_are_its_markers():
    answer = "Steps:\n1.\n2.\n3."
    assert _span_texts(answer, repeated_line_spans(answer)) == ["1.", "2.", "3."]
    assert repeated_line_spans("1. Rest.\n2. Drink fluids.\n3.") == []  # one trailing marker is a cut-off answer


def test_spans_of_a_loop_are_the_phrase_after_its_first_time():
    answer = "The seeds grow towards the growth of the growth of the growth of the light."
    assert _span_texts(answer, repeated_line_spans(answer)) == ["the growth of the growth of the"]
    short = "1. Start a vegetable garden!\n2. Sunday!\n3. 1st!\n4. 1st!\n5. 1st!"
    assert _span_texts(short, repeated_line_spans(short)) == ["1st!", "1st!"]  # a short unit seen three times


def test_spans_of_copied_rubric_text_are_the_shared_word_run():
    answer = "Tips: see a doctor if the symptoms persist or get worse. Rest."
    spans = copied_rubric_spans(answer, RUBRIC)
    assert _span_texts(answer, spans) == ["a doctor if the symptoms persist or get worse"]
    assert copied_rubric_spans("Mentions aloe vera.", RUBRIC) == [(0, len("Mentions aloe vera"))]
    assert copied_rubric_spans(answer, None) == []


def test_spans_of_meta_talk_are_the_sentences_that_match():
    answer = "Rest and drink fluids.\n\nThis answer meets the requirements. Sleep well."
    assert _span_texts(answer, meta_talk_spans(answer)) == ["This answer meets the requirements."]
    here = "Intro line.\nHere's your answer:\nRest and drink fluids."
    assert _span_texts(here, meta_talk_spans(here)) == ["Here's your answer:"]


def test_degeneration_spans_index_the_full_answer_and_skip_the_reasoning():
    answer = "<think>the requirements</think>\n1. Drink plenty of water.\n2. Drink plenty of water."
    spans = degeneration_spans(answer, RUBRIC)
    assert spans["meta_talk"] == []  # the reasoning is not checked, as for the flags
    assert _span_texts(answer, spans["degenerate"]) == ["Drink plenty of water."]
    assert spans["degenerate"][0][0] == answer.rindex("Drink")


@pytest.mark.parametrize(("answer", "repeats", "copies", "meta"), LABELLED)
def test_spans_are_non_empty_exactly_when_the_flag_is_set(answer, repeats, copies, meta):
    spans = degeneration_spans(answer, RUBRIC)
    flags = degeneration_flags(answer, RUBRIC).to_dict()
    assert {name: bool(spans[name]) for name in DEGENERATION_FLAGS} == flags
    assert all(0 <= s < e <= len(answer) for s, e in spans["degenerate"])


def test_repeated_line_spans_agree_with_the_flag_on_random_lists():
    rng = random.Random(3)
    vocab = ["rest", "drink", "water", "sleep", "early", "doctor", "the", "a", "eggs", "slowly"]
    for _ in range(300):
        lines = []
        for i in range(rng.randint(1, 5)):
            words = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 7)))
            lines.append(f"{rng.choice(['', f'{i + 1}. ', '- ', '* ', f'{i + 1}. **'])}{words}.")
        answer = rng.choice(["\n", " ", "\n\n"]).join(lines)
        assert bool(repeated_line_spans(answer)) == repeats_line(answer), answer


@pytest.mark.parametrize(
    "answer",
    [
        "Hugging FaceFaceFaceFaceFace",
        "huggingFacefacesheetsheetshades aedaaedaaedaaedaeateateateateat",
        "ggumumumumumumumumumum",
        "aaaaaaaa",
        "aaaabcabcabcabc",  # a short loop first must not hide the long one that starts inside it
    ],
)
def test_a_word_that_loops_on_a_piece_of_itself_is_a_repeat_with_its_span(answer):
    # A policy collapsed by GRPO wrote these (one run, docs/benchmarks.md): no line, sentence or phrase repeats, so
    # before this check none of them was flagged.
    assert repeats_line(answer)
    spans = repeated_line_spans(answer)
    assert spans and all(0 <= a < b <= len(answer) for a, b in spans)
    assert degeneration_flags(answer).degenerate


@pytest.mark.parametrize(
    "answer",
    [
        "Mississippi is a state. Hmmm, a bookkeeper on the committee.",
        "hahaha",
        "Call 1-800-000-0000 now.",
        "The sky is blue because of Rayleigh scattering.",
    ],  # fmt: skip
)
def test_ordinary_words_with_doubled_letters_are_not_piece_loops(answer):
    assert not repeats_line(answer) and repeated_line_spans(answer) == []


def test_form_checks_can_be_turned_off_and_their_thresholds_hold():
    two_empty = "- Date:\n- Time:\n- Place: the park"
    assert not repeats_line(two_empty) and repeats_line(two_empty, min_empty_fields=2)
    form = "- Date:\n- Time:\n- Occasion:\n- App: calendar"
    assert repeats_line(form) and not repeats_line(form, min_empty_fields=0)
    stack = "Subject: A\nSubject: B\nSubject: C\nSubject: D"
    assert repeats_line(stack) and not repeats_line(stack, stacked_labels=0)
    assert not repeats_line(stack, stacked_labels=5)


def test_spans_of_a_form_are_its_empty_fields_and_the_stacked_lines_after_the_first():
    form = "Plan:\n- Date:\n- Time:\n- Occasion:\n- App: calendar"
    spans = repeated_line_spans(form)
    assert [form[s:e] for s, e in spans] == ["- Date:", "- Time:", "- Occasion:"]  # not "Plan:", its heading
    stack = "Hi.\nSubject: A\nSubject: B\nSubject: C\nSubject: D"
    assert [stack[s:e] for s, e in repeated_line_spans(stack)] == ["Subject: B", "Subject: C", "Subject: D"]
