"""The second real-model rubric world: everyday instructions (recipes, emails, travel plans, shopping lists, ...).

Different in kind from the health and science world ([`make_real_world`]): its criteria are mostly about the *form*
of the answer and a few checkable facts, each checked exactly by a `rule:<kind>:<arg>` tag that `RuleJudge()` reads.

- **format** (per topic, so a student can learn a topic's convention without the rubric): a numbered list or a
  bullet list, opens with a given phrase ("Subject:") or ends with a given closing word ("Enjoy!");
  and, for every prompt, a word limit ([`INSTRUCTION_MAX_WORDS`]);
- **content**: the request's key term ("mentions butter"), and per topic a dollar budget, a named day or time, or a
  duration in minutes;
- **penalties** (negative weight): talking about itself as an AI, and one word specific to the request that the
  answer should avoid ("delicious" in a recipe).

Twelve topics of nine requests each (108 prompts); train and held-out prompts are split by topic, so held-out
topics carry conventions the student never trained on, and only the general criteria (word limit, no AI talk) and
the habit of meeting a topic's requests can transfer.
"""

from __future__ import annotations

import random
import re
from typing import Any

from .instructions import INSTRUCTIONS
from .world import RealWorld, _criterion

#: Bump when requests or criteria change.
INSTRUCTION_WORLD_VERSION = 2
#: The word limit every prompt's rubric carries. SmolLM2's plain answers mostly run past it.
INSTRUCTION_MAX_WORDS = 70

_BUDGET = r"\$\s?\d|\b\d+(\.\d+)? ?(dollars|usd|bucks)\b"
_WEEKDAY = r"\b(mon|tues|wednes|thurs|fri|satur|sun)days?\b"
_CLOCK = r"\b\d{1,2}(:\d{2})? ?(am|pm|a\.m\.|p\.m\.)|\b\d{1,2}:\d{2}\b|\bnoon\b|\bmidnight\b"
_DURATION = r"\b\d+(\s*(-|to)\s*\d+)?\s*(minutes?|mins?|hours?|hrs?)\b"
#: The topic's extra content criterion: (criterion text, title, regex).
_EXTRA: dict[str, tuple[str, str, str]] = {
    "budget": ("Mentions a dollar budget or price (an amount such as $40).", "dollar budget", _BUDGET),
    "when": ("Names a specific day or time (such as Saturday or 7 pm).", "day or time", f"{_WEEKDAY}|{_CLOCK}"),
    "minutes": ("Says how long it takes, in minutes or hours (such as 20 minutes).", "duration", _DURATION),
}


#: topic -> its conventions: list ("numbered", "bullet", or None), an opening phrase or a closing word
#: (as (word the check reads, how the criterion shows it)), and its extra content criterion.
TOPIC_STYLES: dict[str, dict[str, Any]] = {
    "recipes": {"list": "numbered", "closing": ("enjoy", "Enjoy!"), "extra": "minutes"},
    "emails": {"list": None, "opening": "Subject:", "closing": ("thanks", "Thanks"), "extra": "when"},
    "travel plans": {"list": "numbered", "closing": ("travels", "Safe travels!"), "extra": "budget"},
    "shopping lists": {"list": "bullet", "opening": "Shopping list:", "extra": "budget"},
    "study tips": {"list": "numbered", "closing": ("luck", "Good luck!"), "extra": "when"},
    "home chores": {"list": "bullet", "opening": "Chore plan:", "extra": "when"},
    "fitness": {"list": "numbered", "closing": ("strong", "Stay strong!"), "extra": "minutes"},
    "gardening": {"list": "bullet", "closing": ("gardening", "Happy gardening!"), "extra": "when"},
    "party planning": {"list": "numbered", "closing": ("fun", "Have fun!"), "extra": "budget"},
    "pet care": {"list": "bullet", "opening": "Pet care tips:", "extra": "when"},
    "money": {"list": "numbered", "closing": ("saving", "Happy saving!"), "extra": "budget"},
    "gifts": {"list": "bullet", "closing": ("shopping", "Happy shopping!"), "extra": "budget"},
}
INSTRUCTION_TOPICS: tuple[str, ...] = tuple(INSTRUCTIONS)


# Version 1 asked for exactly N items: SmolLM2 met it in 0 of 12 answers with the rubric in view (6 of 12 were
# numbered lists), so the criterion measured counting, not following; version 2 asks for the list.
_NUMBERED = _criterion(
    "Gives the answer as a numbered list (1., 2., 3.).",
    2.0,
    "important",
    "numbered list",
    r"rule:regex:(?m)^\s*(\*\*)?1[.)].*^\s*(\*\*)?2[.)]",
    "topic",
)


_BULLETS = _criterion(
    "Gives a bullet list: each item on its own line starting with '-'.",
    2.0,
    "important",
    "bullet list",
    r"rule:regex:(?m)^\s*[-*•]\s+\S.*^\s*[-*•]\s+\S",
    "topic",
)
_SHORT = _criterion(
    f"Is short: under {INSTRUCTION_MAX_WORDS} words in all.",
    1.0,
    "optional",
    "short",
    f"rule:max_words:{INSTRUCTION_MAX_WORDS}",
    "general",
)
_AS_AN_AI = _criterion(
    "Talks about itself as an AI or a language model (e.g. 'As an AI, ...').",
    -2.0,
    "pitfall",
    "talks as an AI",
    r"rule:regex:\bas an ai\b|\b(ai|artificial intelligence)( language)? model\b|\blanguage model\b"
    r"|\bi('m| am) an? ai\b",
    "general",
)


def _opening(phrase: str) -> dict[str, Any]:
    rule = r"rule:regex:^[\s*#_]*" + re.escape(phrase).replace(r"\ ", r"\s+")
    return _criterion(f"Starts with the words '{phrase}'.", 1.0, "optional", "opening phrase", rule, "topic")


def _closing(word: str, shown: str) -> dict[str, Any]:
    return _criterion(f"Ends with '{shown}'.", 1.0, "optional", "closing word", f"rule:ends_with:{word}", "topic")


def topic_criteria(topic: str) -> list[dict[str, Any]]:
    """The criteria every request of `topic` carries: its list format, opening or closing, and extra content."""
    style = TOPIC_STYLES[topic]
    out = []
    if style["list"] == "numbered":
        out.append(dict(_NUMBERED))
    elif style["list"] == "bullet":
        out.append(dict(_BULLETS))
    if "opening" in style:
        out.append(_opening(style["opening"]))
    if "closing" in style:
        out.append(_closing(*style["closing"]))
    text, title, pattern = _EXTRA[style["extra"]]
    out.append(_criterion(text, 2.0, "important", title, f"rule:regex:{pattern}", "topic"))
    return out


def request_criteria(term: str, pattern: str, banned: str) -> list[dict[str, Any]]:
    """The request's own criteria: its key term (essential) and the word it should avoid (a penalty)."""
    return [
        _criterion(f"Mentions {term}.", 2.0, "essential", "key term", f"rule:regex:{pattern}", "prompt"),
        _criterion(
            f"Uses the word '{banned}'.",
            -1.0,
            "pitfall",
            "penalised word",
            rf"rule:regex:\b{re.escape(banned)}\b",
            "prompt",
        ),  # fmt: skip
    ]


def instruction_rubric_for(topic: str, index: int, rng: random.Random) -> list[dict[str, Any]]:
    """The rubric of request `index` of `topic`, its positive criteria shuffled, penalties last."""
    _, term, pattern, banned = INSTRUCTIONS[topic][index]
    criteria = [*request_criteria(term, pattern, banned), *topic_criteria(topic), dict(_SHORT), dict(_AS_AN_AI)]
    rng.shuffle(criteria)
    return [c for c in criteria if c["weight"] > 0] + [c for c in criteria if c["weight"] <= 0]


def make_instruction_world(seed: int = 0, heldout_topics: int = 3) -> RealWorld:
    """The everyday-instructions world: every request of [`INSTRUCTIONS`], topics split into train and held-out.

    Args:
        seed: Seed of the topic split and of the criterion order in each rubric.
        heldout_topics: Topics kept out of training (1 to 11).
    """
    if not 1 <= heldout_topics < len(INSTRUCTION_TOPICS):
        raise ValueError(f"heldout_topics is {heldout_topics}; expected 1 to {len(INSTRUCTION_TOPICS) - 1}")
    rng = random.Random(f"trl-rubric-instruction-world-{seed}")
    heldout = set(rng.sample(INSTRUCTION_TOPICS, heldout_topics))
    train_rows, heldout_rows = [], []
    for topic in INSTRUCTION_TOPICS:
        for i, (request, *_) in enumerate(INSTRUCTIONS[topic]):
            row = {
                "prompt": [{"role": "user", "content": request}],
                "rubric": instruction_rubric_for(topic, i, rng),
                "topic": topic,
                "domain": "instructions",
            }
            (heldout_rows if topic in heldout else train_rows).append(row)
    return RealWorld(
        seed=seed,
        train_rows=train_rows,
        heldout_rows=heldout_rows,
        train_topics=tuple(t for t in INSTRUCTION_TOPICS if t not in heldout),
        heldout_topics=tuple(t for t in INSTRUCTION_TOPICS if t in heldout),
    )
