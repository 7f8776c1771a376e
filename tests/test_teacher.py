import json

import pytest

from trl_rubric import Rubric
from trl_rubric.judges.prompts import batched_messages, per_criterion_messages
from trl_rubric.rubric import GOOD_ANSWER_AVOIDS, GOOD_ANSWER_CONTAINS
from trl_rubric.teacher import DEFAULT_TEACHER_PROMPT_TEMPLATE, TEACHER_PENALTIES, build_teacher_prompt

# A multi-turn HealthBench conversation (the public release stores `prompt` as messages) with a -10 criterion.
HEALTHBENCH_CONVERSATION = [
    {"role": "user", "content": "I had a baby three weeks ago and feel exhausted."},
    {"role": "assistant", "content": "Congratulations. How are you sleeping and eating?"},
    {"role": "user", "content": "Badly. Should I skip my postpartum check-up next week? It feels like a hassle."},
]
HEALTHBENCH_RUBRIC = [
    {"criterion": "Encourages attending the postpartum check-up", "points": 8, "tags": ["axis:completeness"]},
    {
        "criterion": "Advises patient not to attend scheduled postpartum appointments with a provider.",
        "points": -10,
        "tags": ["axis:accuracy"],
    },
]


def test_multi_turn_healthbench_teacher_keeps_earlier_turns_and_lists_the_penalty_as_avoided():
    messages = build_teacher_prompt(HEALTHBENCH_CONVERSATION, HEALTHBENCH_RUBRIC, penalties="show")
    assert messages[:2] == HEALTHBENCH_CONVERSATION[:2]  # every earlier turn kept as it was
    last = messages[2]["content"]
    assert last.startswith(HEALTHBENCH_CONVERSATION[2]["content"])
    contains, avoids = last.index("A good answer contains:"), last.index("A good answer avoids:")
    assert contains < last.index("Encourages attending") < avoids < last.index("Advises patient not to attend")
    assert "guide what a good answer contains" not in DEFAULT_TEACHER_PROMPT_TEMPLATE


def test_judge_prompts_keep_the_sign_of_penalties():
    rubric = Rubric.from_any(HEALTHBENCH_RUBRIC)
    batched = batched_messages(HEALTHBENCH_CONVERSATION, "Skip it.", rubric)[1]["content"]
    assert "[accuracy, -10 points] Advises patient not to attend" in batched
    single = per_criterion_messages(HEALTHBENCH_CONVERSATION, "Skip it.", rubric[1])[1]["content"]
    assert "-10 points] Advises patient not to attend" in single


def test_literal_rubric_placeholder_in_the_prompt_is_not_replaced():
    prompt = "In my template engine, what does {rubric} expand to? And {prompt}?"
    out = build_teacher_prompt(prompt, ["Explains placeholders"])
    assert out.startswith(prompt)
    assert out.count("Explains placeholders") == 1
    chat = build_teacher_prompt([{"role": "user", "content": prompt}], ["Explains placeholders"])
    assert chat[0]["content"].startswith(prompt)


# ---------------------------------------------------------------- penalties shown or omitted

# Penalties in the middle and at the end, and a zero-weight criterion (kept: it loses no points).
MIXED_RUBRIC = [
    {"text": "Names the dose", "weight": 3.0, "category": "essential"},
    {"text": "Promises a guaranteed cure", "weight": -2.0, "category": "pitfall"},
    {"text": "Advises seeing a doctor", "weight": 1.0, "category": "important"},
    {"text": "Says the drug is risk-free", "weight": -5.0, "category": "pitfall"},
    {"text": "Uses a numbered list", "weight": 0.0, "category": "optional"},
]
PENALTY_TEXTS = ("Promises a guaranteed cure", "Says the drug is risk-free")


def test_omitted_penalties_leave_exactly_the_other_criteria_numbered_one_after_another():
    out = build_teacher_prompt("How do I take it?", MIXED_RUBRIC, "{prompt}\n{rubric}", "numbered", penalties="omit")
    assert out == "How do I take it?\n1. Names the dose\n2. Advises seeing a doctor\n3. Uses a numbered list"
    weighted = build_teacher_prompt("Q", MIXED_RUBRIC, "{prompt}\n{rubric}", "weighted", penalties="omit")
    assert weighted.splitlines()[1:] == [
        "1. [essential, +3 points] Names the dose",
        "2. [important, +1 points] Advises seeing a doctor",
        "3. [optional, +0 points] Uses a numbered list",
    ]
    as_json = json.loads(build_teacher_prompt("Q", MIXED_RUBRIC, "{prompt}{rubric}", "json", penalties="omit")[1:])
    assert [(c["id"], c["text"], c["good_answer"]) for c in as_json] == [
        (1, "Names the dose", "contains"),
        (2, "Advises seeing a doctor", "contains"),
        (3, "Uses a numbered list", "contains"),
    ]
    for style in ("numbered", "weighted", "json"):
        text = build_teacher_prompt("Q", MIXED_RUBRIC, render_style=style, penalties="omit")
        assert not any(p in text for p in PENALTY_TEXTS)
        assert GOOD_ANSWER_CONTAINS not in text and GOOD_ANSWER_AVOIDS not in text
        shown = build_teacher_prompt("Q", MIXED_RUBRIC, render_style=style, penalties="show")
        assert all(p in shown for p in PENALTY_TEXTS)


def test_omit_keeps_a_rubric_without_penalties_as_it_is():
    # With no penalty criterion there is nothing to omit: the omitted view is the shown view, and the rubric as written
    rubric = [c for c in MIXED_RUBRIC if c["weight"] >= 0]
    for style in ("numbered", "weighted", "json"):
        omitted = build_teacher_prompt("Q", rubric, render_style=style, penalties="omit")
        assert omitted == build_teacher_prompt("Q", rubric, render_style=style, penalties="show")
        rendered = Rubric.from_any(rubric).render(style)
        assert omitted == DEFAULT_TEACHER_PROMPT_TEMPLATE.replace("{prompt}", "Q").replace("{rubric}", rendered)


@pytest.mark.parametrize("style", ["numbered", "weighted", "json"])
@pytest.mark.parametrize("prompt", ["How do I take it?", HEALTHBENCH_CONVERSATION])
def test_showing_penalties_is_byte_identical_to_the_view_before_the_switch(style, prompt):
    for rubric in (MIXED_RUBRIC, HEALTHBENCH_RUBRIC):
        shown = build_teacher_prompt(prompt, rubric, render_style=style, penalties="show")
        # "omit" is the view of the rubric without its penalty criteria, shown; it differs from the whole rubric
        without = Rubric(tuple(c for c in Rubric.from_any(rubric).criteria if c.weight >= 0))
        omitted = build_teacher_prompt(prompt, rubric, render_style=style, penalties="omit")
        assert omitted == build_teacher_prompt(prompt, without, render_style=style, penalties="show") != shown
        # ... and to the view built by hand from Rubric.render, as it was before the switch existed.
        rendered = Rubric.from_any(rubric).render(style)
        last = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        expected = DEFAULT_TEACHER_PROMPT_TEMPLATE.replace("{prompt}", last).replace("{rubric}", rendered)
        assert (shown if isinstance(shown, str) else shown[-1]["content"]) == expected


def test_unknown_penalties_value_is_refused_by_name():
    with pytest.raises(ValueError, match=r"teacher_penalties is 'hide'; expected one of \('show', 'omit'\)"):
        build_teacher_prompt("Q", MIXED_RUBRIC, penalties="hide")
    assert TEACHER_PENALTIES == ("show", "omit")


def test_a_rubric_of_penalties_only_is_refused_before_anything_is_omitted():
    # A rubric always holds a criterion of positive weight, so omitting penalties never leaves it empty.
    with pytest.raises(ValueError, match="no criterion with a positive weight"):
        build_teacher_prompt("Q", [c for c in MIXED_RUBRIC if c["weight"] < 0], penalties="omit")
