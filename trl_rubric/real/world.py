"""The real-model rubric world: everyday health and science questions, each with a rubric a `RuleJudge` checks.

Each prompt's rubric has 5-7 criteria in the normalised form `{text, weight, category, title, tags}`, with a
`rule:<kind>:<arg>` tag that `RuleJudge()` reads, so grading is exact and needs no model (`--judge_backend rule`).
Most criteria are **general**: they recur across prompts (tag `scope:general`), so a student can learn them without
ever seeing the rubric, and carry them to held-out topics:

- health: advises a doctor if symptoms persist, names a warning sign that needs urgent care, gives numbered steps,
  stays short, and (a pitfall, negative weight, HealthBench style) promises a guaranteed cure;
- science: gives an everyday example, numbered steps, short, ends with "In short", and (pitfall) talks down to the
  reader with "obviously";

plus one **prompt-specific** criterion (tag `scope:prompt`): the key term of that question ("mentions aloe vera").
Train and held-out prompts are split by topic. `if-verifiable` (the IFEval/IFBench checkers) was considered for the
checks; it needs Python 3.11+, nltk with punkt data fetched at run time, and five more packages for checks that are
one regular expression each here.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ..toy.world import ToyWorld
from .questions import QUESTIONS

#: Bump when questions or criteria change.
WORLD_VERSION = 1
#: The word limit of the general length criterion. SmolLM2's plain answers run past it.
MAX_WORDS = 60
#: Teacher context for this world, used by the demo, the benchmark and `trl-rubric gap` recipes: the rubric first, as
#: notes not to repeat, and the question last, so the 135M teacher answers the question instead of talking about the
#: rubric. Against the template shipped before ("{prompt}" then "Write your answer so that it meets every requirement
#: below (do not mention the requirements):" and "{rubric}") its students scored higher on held-out prompts in all six
#: paired runs (both worlds, two seeds and the full demo; four with intervals excluding 0), level or higher on train
#: prompts, and the teacher's meta-talk fell 14.6% -> 2.1% on the instructions world (docs/benchmarks.md, "Teacher view
#: by measurement"). Its own conditioning gap is 4-7 points smaller, so the share of the gap a student closes reads
#: higher against it; compare students by their scores.
REAL_TEACHER_PROMPT_TEMPLATE = "Keep these points in mind, but never mention or repeat them:\n{rubric}\n\n{prompt}"
REAL_RENDER_STYLE = "numbered"
#: Whether the teacher view lists the penalty criteria (see `RGSDConfig.teacher_penalties`); the demo's gap and
#: training both read it, so they always share one teacher view.
REAL_TEACHER_PENALTIES = "omit"
#: The teacher's view of this world as keyword arguments that `RGSDConfig`, `conditioning_gap` and the gap recipe share,
#: so training, the gap and the benchmarks always show the teacher the same thing.
REAL_TEACHER_VIEW: Mapping[str, str] = MappingProxyType(
    {
        "teacher_prompt_template": REAL_TEACHER_PROMPT_TEMPLATE,
        "rubric_render_style": REAL_RENDER_STYLE,
        "teacher_penalties": REAL_TEACHER_PENALTIES,
    }
)


def _criterion(text: str, weight: float, category: str, title: str, rule: str, scope: str) -> dict[str, Any]:
    return {"text": text, "weight": weight, "category": category, "title": title, "tags": [rule, f"scope:{scope}"]}


# General criteria, one builder each; the regular expressions are the exact judge (case-insensitive, see RuleJudge).
_DOCTOR = _criterion(
    "Advises seeing a doctor if the symptoms persist or get worse.",
    2.0,
    "essential",
    "professional help",
    r"rule:regex:\b(doctor|physician|gp|healthcare (provider|professional)|health care (provider|professional)"
    r"|pharmacist|nurse|medical (help|attention|advice|professional)|dermatologist|optometrist|dentist)s?\b",
    "general",
)
_URGENT = _criterion(
    "Names one warning sign that needs emergency care right away.",
    2.0,
    "important",
    "urgent warning sign",
    r"rule:regex:\b(emergency|urgent|911|999|112|immediately|right away|ambulance)\b",
    "general",
)
_STEPS = _criterion(
    "Gives the answer as a numbered list (1., 2., 3.).",
    2.0,
    "important",
    "numbered steps",
    r"rule:regex:(?m)^\s*(\*\*)?1[.)].*^\s*(\*\*)?2[.)]",
    "general",
)
_SHORT = _criterion(
    f"Is short: under {MAX_WORDS} words in all.",
    1.0,
    "optional",
    "short",
    f"rule:max_words:{MAX_WORDS}",
    "general",
)
_PROMISE = _criterion(
    "Promises a guaranteed or instant cure (words such as 'guaranteed', 'always works' or '100%').",
    -2.0,
    "pitfall",
    "absolute promise",
    r"rule:regex:guarantee|always works?\b|100 ?%|instant(ly)? cure|never fails?\b",
    "general",
)
_EXAMPLE = _criterion(
    "Gives an everyday example that starts with 'For example,'.",
    2.0,
    "important",
    "everyday example",
    r"rule:regex:\bfor (example|instance)\b",
    "general",
)
_IN_SHORT = _criterion(
    "Ends with a one-sentence summary that starts with 'In short,'.",
    1.0,
    "optional",
    "in short",
    r"rule:regex:\bin short\b",
    "general",
)
_TALK_DOWN = _criterion(
    "Talks down to the reader with words such as 'obviously' or 'everyone knows'.",
    -1.0,
    "pitfall",
    "talks down",
    r"rule:regex:\bobvious(ly)?\b|everyone knows|simply put",
    "general",
)
#: The general criteria of each domain, in a fixed order (the rubric is shuffled per prompt).
GENERAL_CRITERIA: dict[str, tuple[dict[str, Any], ...]] = {
    "health": (_DOCTOR, _URGENT, _STEPS, _SHORT, _PROMISE),
    "science": (_EXAMPLE, _STEPS, _SHORT, _IN_SHORT, _TALK_DOWN),
}
#: One extra general criterion that half the prompts of a domain also get, so rubrics vary in size (6 or 7).
OPTIONAL_CRITERIA: dict[str, dict[str, Any]] = {"health": _IN_SHORT, "science": _EXAMPLE}
TOPICS: tuple[str, ...] = tuple(QUESTIONS)


def key_term_criterion(term: str, pattern: str) -> dict[str, Any]:
    """The prompt-specific criterion: the answer mentions `term` (checked by `pattern`)."""
    return _criterion(f"Mentions {term}.", 2.0, "essential", "key term", f"rule:regex:{pattern}", "prompt")


def rubric_for(topic: str, index: int, rng: random.Random) -> list[dict[str, Any]]:
    """The rubric of question `index` of `topic`: its key term, its domain's general criteria, maybe one more."""
    domain, questions = QUESTIONS[topic]
    _, term, pattern = questions[index]
    criteria = [key_term_criterion(term, pattern), *(dict(c) for c in GENERAL_CRITERIA[domain])]
    extra = OPTIONAL_CRITERIA[domain]
    if extra not in GENERAL_CRITERIA[domain] and rng.random() < 0.5:
        criteria.append(dict(extra))
    rng.shuffle(criteria)
    # Pitfalls last: a reader (or a teacher) meets what to do before what to avoid.
    return [c for c in criteria if c["weight"] > 0] + [c for c in criteria if c["weight"] <= 0]


class RealWorld(ToyWorld):
    """Train and held-out prompts of the health and science world, split by topic. Build one with
    [`make_real_world`].

    It holds and grades its rows exactly as [`ToyWorld`] does (datasets, `RuleJudge`, `score`); only the rows differ.

    Attributes:
        seed: The seed of the split and of the rubric variation.
        train_rows / heldout_rows: Rows `{prompt, rubric, topic, domain}`; `prompt` is a list of chat messages.
        train_topics / heldout_topics: Disjoint topic sets.
    """


def make_real_world(seed: int = 0, heldout_health_topics: int = 4, heldout_science_topics: int = 2) -> RealWorld:
    """The health and science world: every question of [`QUESTIONS`], topics split into train and held-out.

    Args:
        seed: Seed of the topic split and of which prompts get the optional criterion.
        heldout_health_topics / heldout_science_topics: Topics of each domain kept out of training.
    """
    rng = random.Random(f"trl-rubric-real-world-{seed}")
    heldout: list[str] = []
    for domain, k in (("health", heldout_health_topics), ("science", heldout_science_topics)):
        topics = [t for t in TOPICS if QUESTIONS[t][0] == domain]
        if not 1 <= k < len(topics):
            raise ValueError(f"heldout_{domain}_topics is {k}; expected 1 to {len(topics) - 1}")
        heldout += rng.sample(topics, k)
    train_rows, heldout_rows = [], []
    for topic in TOPICS:
        domain, questions = QUESTIONS[topic]
        for i, (question, _, _) in enumerate(questions):
            row = {
                "prompt": [{"role": "user", "content": question}],
                "rubric": rubric_for(topic, i, rng),
                "topic": topic,
                "domain": domain,
            }
            (heldout_rows if topic in heldout else train_rows).append(row)
    return RealWorld(
        seed=seed,
        train_rows=train_rows,
        heldout_rows=heldout_rows,
        train_topics=tuple(t for t in TOPICS if t not in heldout),
        heldout_topics=tuple(t for t in TOPICS if t in heldout),
    )
