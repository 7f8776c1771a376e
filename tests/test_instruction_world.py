"""The second real-model world: everyday instructions with rule-checked format, content and penalty criteria."""

import re

import pytest

from trl_rubric.judges.rule import RuleJudge, parse_rule_tag
from trl_rubric.real.instruction_world import (
    INSTRUCTION_MAX_WORDS,
    INSTRUCTION_TOPICS,
    TOPIC_STYLES,
    make_instruction_world,
)
from trl_rubric.real.instructions import INSTRUCTIONS
from trl_rubric.real.worlds import WORLDS, make_named_world
from trl_rubric.rubric import Rubric


def _rule(criterion):
    return next(t for t in criterion["tags"] if t.startswith("rule:"))


def test_world_has_at_least_100_prompts_split_by_topic():
    world = make_instruction_world()
    rows = world.train_rows + world.heldout_rows
    assert len(rows) >= 100
    train, heldout = {r["topic"] for r in world.train_rows}, {r["topic"] for r in world.heldout_rows}
    assert train and heldout and not train & heldout
    assert set(world.train_topics) == train and set(world.heldout_topics) == heldout
    assert train | heldout == set(INSTRUCTION_TOPICS)
    requests = [r["prompt"][0]["content"] for r in rows]
    assert len(set(requests)) == len(requests)


def test_world_is_deterministic_given_a_seed_and_seeds_differ():
    a, b = make_instruction_world(seed=3), make_instruction_world(seed=3)
    assert a.train_rows == b.train_rows and a.heldout_rows == b.heldout_rows
    others = [make_instruction_world(seed=s) for s in range(4, 8)]
    assert any(o.heldout_topics != a.heldout_topics for o in others)


def test_heldout_topics_is_checked():
    with pytest.raises(ValueError, match="heldout_topics is 0"):
        make_instruction_world(heldout_topics=0)


def test_every_rubric_has_format_content_and_penalty_criteria_all_rule_checked():
    world = make_instruction_world()
    judge = RuleJudge()
    for row in world.train_rows + world.heldout_rows:
        rubric = Rubric.from_any(row["rubric"])
        titles = {c["title"] for c in row["rubric"]}
        assert {"key term", "short", "penalised word", "talks as an AI"} <= titles
        assert titles & {"numbered list", "bullet list", "opening phrase", "closing word"}
        assert titles & {"dollar budget", "day or time", "duration"}
        for c in row["rubric"]:
            assert parse_rule_tag(_rule(c)) is not None
        assert judge.verdicts("", rubric).count(None) == 0
        # Penalties come last, so a reader meets what to do before what to avoid.
        weights = [c["weight"] for c in row["rubric"]]
        assert weights == sorted(weights, key=lambda w: w <= 0)


def _verdict(criterion, answer):
    return RuleJudge().verdicts(
        answer, Rubric.from_any([criterion, {"text": "x", "weight": 1, "tags": ["rule:min_words:0"]}])
    )[0]


# (title, passing answer, failing answer) for each kind of criterion, on the first row that has it.
CASES = {
    "numbered list": ("numbered", "recipes"),
    "bullet list": ("bullet", "shopping lists"),
    "opening phrase": ("opening", "emails"),
    "closing word": ("closing", "recipes"),
    "dollar budget": ("budget", "travel plans"),
    "day or time": ("when", "emails"),
    "duration": ("minutes", "recipes"),
}


def _criterion(world, topic, title):
    row = next(r for r in world.train_rows + world.heldout_rows if r["topic"] == topic)
    return next(c for c in row["rubric"] if c["title"] == title)


def test_format_criteria_pass_and_fail_on_hand_written_answers():
    world = make_instruction_world()
    five = "1. Crack the eggs.\n2. Whisk.\n3. Melt butter.\n4. Stir.\n5. Serve."
    numbered = _criterion(world, "recipes", "numbered list")
    assert TOPIC_STYLES["recipes"]["list"] == "numbered"
    assert _verdict(numbered, "Here you go:\n" + five) is True
    assert _verdict(numbered, "**1.** Crack the eggs.\n**2.** Whisk.") is True
    assert _verdict(numbered, "1. Crack the eggs, whisk, melt butter, stir, serve.") is False  # one item is no list
    assert _verdict(numbered, "Crack the eggs, whisk, melt butter, stir, serve.") is False

    bullets = _criterion(world, "shopping lists", "bullet list")
    assert _verdict(bullets, "Shopping list:\n- eggs\n- milk\n- bread") is True
    assert _verdict(bullets, "**Eggs** and **milk**, then bread.") is False

    opening = _criterion(world, "emails", "opening phrase")
    assert _verdict(opening, "Subject: Day off on Friday\n\nHi Sam, ...") is True
    assert _verdict(opening, "**Subject:** Day off") is True
    assert _verdict(opening, "Hi Sam,\nSubject: day off") is False

    closing = _criterion(world, "recipes", "closing word")
    assert _verdict(closing, "Cook for 5 minutes. Enjoy!") is True
    assert _verdict(closing, "Enjoy! Then wash up.") is False

    short = _criterion(world, "recipes", "short")
    assert _verdict(short, " ".join(["word"] * INSTRUCTION_MAX_WORDS)) is True
    assert _verdict(short, " ".join(["word"] * (INSTRUCTION_MAX_WORDS + 1))) is False


def test_content_criteria_pass_and_fail_on_hand_written_answers():
    world = make_instruction_world()
    budget = _criterion(world, "travel plans", "dollar budget")
    assert _verdict(budget, "Keep it under $150 for the weekend.") is True
    assert _verdict(budget, "It costs about 40 dollars.") is True
    assert _verdict(budget, "Keep it cheap.") is False

    when = _criterion(world, "emails", "day or time")
    for ok in ("Could we meet on Thursday?", "Lunch at 12:30 works.", "See you at 7 pm."):
        assert _verdict(when, ok) is True, ok
    assert _verdict(when, "Could we meet soon?") is False

    duration = _criterion(world, "recipes", "duration")
    assert _verdict(duration, "Cook for 10-12 minutes.") is True
    assert _verdict(duration, "Cook until done.") is False

    # Row-specific key term: the scrambled-eggs request wants butter.
    row = next(r for r in world.train_rows + world.heldout_rows if "scrambled eggs" in r["prompt"][0]["content"])
    key = next(c for c in row["rubric"] if c["title"] == "key term")
    assert key["text"] == "Mentions butter."
    assert _verdict(key, "Melt a little butter in the pan.") is True
    assert _verdict(key, "Heat some oil in the pan.") is False


def test_penalties_fire_on_the_forbidden_words_only():
    world = make_instruction_world()
    row = next(r for r in world.train_rows + world.heldout_rows if "scrambled eggs" in r["prompt"][0]["content"])
    banned = next(c for c in row["rubric"] if c["title"] == "penalised word")
    ai = next(c for c in row["rubric"] if c["title"] == "talks as an AI")
    assert banned["weight"] < 0 and ai["weight"] < 0
    assert _verdict(banned, "These eggs are delicious.") is True
    assert _verdict(banned, "These eggs are deliciously soft.") is False  # a whole word only
    assert _verdict(ai, "As an AI, I cannot taste eggs.") is True
    assert _verdict(ai, "I'm an AI language model.") is True
    assert _verdict(ai, "Whisk the eggs gently.") is False
    good = "1. Melt butter.\n2. Whisk eggs.\n3. Pour in.\n4. Stir for 2 minutes.\n5. Season. Enjoy!"
    assert world.score(good, row["rubric"]) > world.score(good.replace("Season.", "Season, delicious."), row["rubric"])


def test_every_key_term_check_accepts_its_own_wording_and_no_request_contains_its_penalised_word():
    for topic, requests in INSTRUCTIONS.items():
        for request, term, pattern, banned in requests:
            compiled = re.compile(pattern, re.IGNORECASE)
            assert re.fullmatch(r"[\w-]+", banned), (topic, banned)
            assert not re.search(rf"\b{re.escape(banned)}\b", request, re.IGNORECASE), (request, banned)
            assert compiled.search(term), (topic, request, term)  # the rubric's own wording passes its check


def test_worlds_are_named_and_reachable_as_dataset_names():
    from trl_rubric.scripts._common import UsageError, real_dataset

    assert set(WORLDS) == {"health", "instructions"}
    world = make_named_world("instructions")
    assert len(real_dataset("smollm2://instructions/train")) == len(world.train_rows)
    assert len(real_dataset("smollm2://instructions/heldout")) == len(world.heldout_rows)
    assert len(real_dataset("smollm2://health/heldout")) == len(real_dataset("smollm2://heldout"))
    with pytest.raises(UsageError, match="instructions"):
        real_dataset("smollm2://recipes/train")
    with pytest.raises(ValueError, match="expected one of"):
        make_named_world("recipes")


def test_demo_world_option_is_checked_before_anything_runs(capsys):
    from trl_rubric.scripts.demo import main

    assert main(["--model", "smollm2", "--world", "recipes"]) == 2
    assert "--world is 'recipes'; expected one of ['health', 'instructions']" in capsys.readouterr().err
    assert main(["--world", "instructions"]) == 2  # the toy model has its own world
    assert "--world instructions needs --model smollm2" in capsys.readouterr().err
