from trl_rubric import Rubric
from trl_rubric.judges.prompts import batched_messages, per_criterion_messages
from trl_rubric.teacher import DEFAULT_TEACHER_PROMPT_TEMPLATE, build_teacher_prompt

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
    messages = build_teacher_prompt(HEALTHBENCH_CONVERSATION, HEALTHBENCH_RUBRIC)
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
