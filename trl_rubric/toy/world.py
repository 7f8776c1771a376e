"""The offline rubric world: a synthetic task family whose rubrics a `RuleJudge` checks exactly.

Prompts ask about a topic ("tell me about apple."). Each prompt has a rubric of 2-5 criteria in the normalised form
`{text, weight, category, title, tags}`; every criterion carries a `rule:` tag, so `RuleJudge()` grades it with no
extra configuration. The criteria mix two scopes:

- **prompt-specific** (tag `scope:prompt`): "mentions the required word W", where W is a descriptive word (one of
  [`KEY_WORDS`]) drawn per prompt, and "mentions the forbidden word P" (a pitfall: negative weight, met means
  penalised), where P is one of the topic's own, tempting words. Nothing in the prompt predicts W or P, so a student
  can only learn them prompt by prompt.
- **general** (tag `scope:general`): rules shared by every prompt that has them: name the topic, end with the word
  "done", use at most 8 words, never say "maybe". A student that learns these on the train prompts should carry them
  to held-out prompts, whose topics it never trained on.

The word right before W or P ("required", "forbidden", "topic") says what to do with it, so a small model reading the
rubric left to right can tell a word to copy from a word to avoid by looking one token back.

Two response distributions define the world: [`ignoring_response`] is what a model says when it sees the prompt
only (topic-ish words, often off-rubric), and [`reference_response`] is the same distribution made to satisfy the
rubric, with the required words brought forward. [`minimal_response`] is the bare satisfying answer. A toy model pretrained on both (see `trl_rubric.toy.pretrain`) has a conditioning gap for
Rubric-Guided Self-Distillation (arXiv 2606.12507) to close.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset

from ..data import load_rubric_dataset
from ..judges.rule import RuleJudge
from ..rubric import Rubric

#: Bump when the lexicon or a generator changes: pretrained toy checkpoints are cached under a key that includes it.
WORLD_VERSION = 1

#: Each topic with five words a plain (rubric-blind) answer about it tends to use. Pitfall words come from here.
ASSOCIATIONS: dict[str, tuple[str, ...]] = {
    "apple": ("red", "sweet", "tree", "juice", "seed"),
    "river": ("water", "fish", "bank", "flow", "bridge"),
    "moon": ("night", "light", "orbit", "crater", "tide"),
    "bread": ("flour", "oven", "crust", "yeast", "butter"),
    "winter": ("snow", "cold", "ice", "scarf", "frost"),
    "garden": ("flower", "soil", "rain", "weed", "bee"),
    "train": ("rail", "station", "ticket", "engine", "track"),
    "ocean": ("wave", "salt", "whale", "deep", "shore"),
    "forest": ("pine", "leaf", "deer", "moss", "trail"),
    "music": ("song", "drum", "note", "piano", "rhythm"),
    "city": ("street", "tower", "crowd", "noise", "park"),
    "desert": ("sand", "heat", "dune", "camel", "dry"),
    "kitchen": ("knife", "pan", "stove", "spoon", "sink"),
    "mountain": ("peak", "rock", "climb", "cliff", "valley"),
    "library": ("book", "shelf", "quiet", "page", "desk"),
    "storm": ("thunder", "wind", "cloud", "flash", "gust"),
    "school": ("teacher", "class", "lesson", "chalk", "bell"),
    "island": ("palm", "beach", "boat", "coral", "lagoon"),
    "coffee": ("bean", "cup", "bitter", "roast", "milk"),
    "castle": ("wall", "king", "gate", "moat", "stone"),
}
TOPICS: tuple[str, ...] = tuple(ASSOCIATIONS)
#: Every content word, in a fixed order; required words are drawn from here.
CONTENT_WORDS: tuple[str, ...] = tuple(w for words in ASSOCIATIONS.values() for w in words)
#: Descriptive words that fit any topic; each prompt's required word is drawn from here. A word class of its own, so
#: a small model can find "the word to copy" in a rubric by what it is as well as by the cue word before it.
KEY_WORDS: tuple[str, ...] = (
    "golden", "silver", "ancient", "gentle", "bright", "quick", "heavy", "tiny", "giant", "secret",
    "happy", "lucky", "famous", "modern", "simple", "strange", "noble", "wild", "calm", "proud",
    "rare", "fresh", "magic", "royal", "clever", "brave", "lonely", "busy", "early", "warm",
)  # fmt: skip
#: Glue words that make answers read like short sentences.
FILLERS: tuple[str, ...] = ("is", "and", "the", "very", "it", "has", "with", "a", "of", "so")
#: The general closing rule: answers should end with this word.
CLOSING_WORD = "done"
#: Other sign-offs a rubric-blind answer ends with; none of them satisfies the closing rule.
OTHER_CLOSERS: tuple[str, ...] = ("bye", "thanks", "ok")
#: The general hedge pitfall: answers should never say this word.
HEDGE_WORD = "maybe"
#: The general length rule.
MAX_WORDS = 8
#: Longest answer either distribution produces, in words (the world's answers are short and word-level).
LONGEST_RESPONSE = 14
#: Prompt phrasings; `{topic}` is replaced by the topic word.
PHRASINGS: tuple[str, ...] = (
    "tell me about {topic}.",
    "what do you know about {topic}?",
    "describe {topic}.",
    "write a line about {topic}.",
    "say something about {topic}.",
    "explain {topic}.",
    "give me a note on {topic}.",
    "talk about {topic}.",
)

# Weights follow the rubric literature's spread: the prompt-specific word matters most, penalties are negative.
_REQUIRED_WEIGHT = 3.0
_TOPIC_WEIGHT = 2.0
_CLOSING_WEIGHT = 1.0
_LENGTH_WEIGHT = 1.0
_PITFALL_WEIGHT = -2.0
_HEDGE_WEIGHT = -1.0
# Optional criteria kinds; a rubric has the required word plus 1-4 of these.
_OPTIONAL_KINDS = ("topic", "closing", "length", "pitfall", "hedge")

# Rates of the rubric-blind distribution. They make a prompt-only answer satisfy each optional criterion by chance
# now and then (so the criteria are reachable), but far from always (so the rubric has something to add).
_P_TOPIC_WORD = 0.5
_P_HEDGE = 0.4
_P_CLOSER = 0.4
_P_OWN_ASSOCIATION = 0.45
_P_OTHER_CONTENT = 0.2
_P_KEY_WORD = 0.05
# Rate of the rubric-aware distribution: how sure it is that a still-missing required word comes next.
_P_REQUIRED_NEXT = 0.5


def _criterion(text: str, weight: float, category: str, title: str, rule: str, scope: str) -> dict[str, Any]:
    return {"text": text, "weight": weight, "category": category, "title": title, "tags": [rule, f"scope:{scope}"]}


def sample_rubric(rng: random.Random, topic: str) -> list[dict[str, Any]]:
    """Draw a rubric of 2-5 criteria for a prompt about `topic`, in the normalised dict form.

    The required word is one of [`KEY_WORDS`], which a rubric-blind answer rarely says; the pitfall word is one
    of the topic's own associations, so a rubric-blind answer often does.

    Args:
        rng: Source of randomness; the result depends only on its state and `topic`.
        topic: One of [`TOPICS`].

    Returns:
        A shuffled list of criterion dicts, each with a `rule:` tag and a `scope:prompt` or `scope:general` tag.
    """
    if topic not in ASSOCIATIONS:
        raise ValueError(f"unknown topic {topic!r}; expected one of {TOPICS}")
    required = rng.choice(KEY_WORDS)
    criteria = [
        _criterion(
            f"mentions the required word {required}",
            _REQUIRED_WEIGHT,
            "essential",
            "required word",
            f"rule:contains:{required}",
            "prompt",
        )
    ]
    for kind in rng.sample(_OPTIONAL_KINDS, rng.randint(1, len(_OPTIONAL_KINDS) - 1)):
        if kind == "topic":
            criteria.append(
                _criterion(
                    f"names the topic {topic}",
                    _TOPIC_WEIGHT,
                    "important",
                    "topic word",
                    f"rule:contains:{topic}",
                    "general",
                )
            )
        elif kind == "closing":
            criteria.append(
                _criterion(
                    f"ends with the word {CLOSING_WORD}",
                    _CLOSING_WEIGHT,
                    "optional",
                    "closing word",
                    f"rule:ends_with:{CLOSING_WORD}",
                    "general",
                )
            )
        elif kind == "length":
            criteria.append(
                _criterion(
                    f"uses at most {MAX_WORDS} words",
                    _LENGTH_WEIGHT,
                    "optional",
                    "length",
                    f"rule:max_words:{MAX_WORDS}",
                    "general",
                )
            )
        elif kind == "pitfall":
            pitfall = rng.choice(ASSOCIATIONS[topic])
            criteria.append(
                _criterion(
                    f"mentions the forbidden word {pitfall}",
                    _PITFALL_WEIGHT,
                    "pitfall",
                    "pitfall word",
                    f"rule:contains:{pitfall}",
                    "prompt",
                )
            )
        else:
            criteria.append(
                _criterion(
                    f"mentions the forbidden word {HEDGE_WORD}",
                    _HEDGE_WEIGHT,
                    "pitfall",
                    "hedge",
                    f"rule:contains:{HEDGE_WORD}",
                    "general",
                )
            )
    rng.shuffle(criteria)
    return criteria


@dataclass(frozen=True)
class _Constraints:
    required: tuple[str, ...] = ()
    forbidden: frozenset[str] = frozenset()
    end_with_closing: bool = False
    max_words: int = LONGEST_RESPONSE


def _constraints(rubric: Any) -> _Constraints:
    """Read what a satisfying answer must do from the rubric's `rule:` tags (the same tags the judge reads)."""
    required, forbidden, closing, max_words = [], set(), False, LONGEST_RESPONSE
    for criterion in Rubric.from_any(rubric):
        rule = next((t for t in criterion.tags if t.startswith("rule:")), None)
        if rule is None:
            raise ValueError(f"criterion {criterion.text!r} has no rule: tag; the toy world cannot satisfy it")
        _, kind, arg = rule.split(":", 2)
        positive = criterion.weight > 0
        if kind == "contains" and positive:
            required.append(arg)
        elif kind == "contains":
            forbidden.add(arg)
        elif kind == "ends_with" and positive and arg == CLOSING_WORD:
            closing = True
        elif kind == "max_words" and positive:
            max_words = min(max_words, int(arg))
        else:
            raise ValueError(f"criterion {criterion.text!r}: the toy world has no generator for {rule!r}")
    return _Constraints(tuple(dict.fromkeys(required)), frozenset(forbidden), closing, max_words)


def _body_word(rng: random.Random, topic: str, forbidden: frozenset[str]) -> str:
    # Rejection sampling keeps the conditioned distribution equal to the blind one restricted to allowed words.
    while True:
        u = rng.random()
        if u < _P_OWN_ASSOCIATION:
            word = rng.choice(ASSOCIATIONS[topic])
        elif u < _P_OWN_ASSOCIATION + _P_OTHER_CONTENT:
            word = rng.choice(CONTENT_WORDS)
        elif u < _P_OWN_ASSOCIATION + _P_OTHER_CONTENT + _P_KEY_WORD:
            word = rng.choice(KEY_WORDS)
        else:
            word = rng.choice(FILLERS)
        if word not in forbidden:
            return word


def _compose(rng: random.Random, topic: str, c: _Constraints, eagerness: float = _P_REQUIRED_NEXT) -> str:
    # Decide the ending first, so the length budget accounts for it.
    if c.end_with_closing:
        closer = CLOSING_WORD
    elif rng.random() < _P_CLOSER:
        closer = rng.choice((CLOSING_WORD, *OTHER_CLOSERS))
    else:
        closer = None
    extras = [w for w in (topic, HEDGE_WORD) if w not in c.required and w not in c.forbidden]
    extras = [w for w in extras if rng.random() < (_P_TOPIC_WORD if w == topic else _P_HEDGE)]
    n_closer = int(closer is not None)
    low = max(3, len(c.required) + len(extras) + n_closer)
    length = rng.randint(low, max(low, min(c.max_words, LONGEST_RESPONSE)))
    words = [_body_word(rng, topic, c.forbidden) for _ in range(length - n_closer - len(c.required) - len(extras))]
    for word in extras:  # words said by chance land anywhere
        words.insert(rng.randint(0, len(words)), word)
    for word in c.required:
        # A required word comes at each next position with a constant chance until it has come (a geometric
        # position), so after any prefix that lacks it a rubric-aware model still strongly expects it. That is the
        # per-token signal a distilled student gets on its own samples, wherever they went astray.
        position = 0
        while position < len(words) and rng.random() >= eagerness:
            position += 1
        words.insert(position, word)
    if closer is not None:
        words.append(closer)
    return " ".join(words)


def ignoring_response(rng: random.Random, topic: str) -> str:
    """A plausible answer from a model that sees the prompt but not the rubric.

    Topic-ish words: the topic's associations, other content words and fillers; the topic word about half the time;
    "maybe" often; an optional sign-off that is "done" only sometimes; 3-14 words.
    """
    return _compose(rng, topic, _Constraints())


def reference_response(rng: random.Random, topic: str, rubric: Any, eagerness: float = _P_REQUIRED_NEXT) -> str:
    """An answer that meets every positive criterion of `rubric` and none of its penalties.

    It is drawn from the rubric-blind distribution of [`ignoring_response`] with the rubric's constraints enforced,
    and required words come early (each next position has an even chance of being the missing required word), so the
    two distributions differ only where the rubric speaks, and sharply there: that difference is the conditioning gap.

    Args:
        rng: Source of randomness.
        topic: The prompt's topic.
        rubric: Anything `Rubric.from_any` reads, whose criteria carry the world's `rule:` tags.
        eagerness: Chance that a still-missing required word comes at the next position; 1.0 puts the required words
            first.
    """
    if not 0.0 < eagerness <= 1.0:
        raise ValueError(f"eagerness is {eagerness}; expected a probability in (0, 1]")
    return _compose(rng, topic, _constraints(rubric), eagerness)


def minimal_response(rubric: Any) -> str:
    """The shortest answer that meets `rubric`: its required words in rubric order, then the closing word if asked.

    Used as a warm-up drill when pretraining the toy model: with nothing else in the answer, the only thing to learn
    is which rubric words to copy.
    """
    c = _constraints(rubric)
    return " ".join([*c.required, *([CLOSING_WORD] if c.end_with_closing else [])])


def prompt_messages(topic: str, phrasing: int) -> list[dict[str, str]]:
    """The chat prompt for `topic` in phrasing number `phrasing` (an index into [`PHRASINGS`])."""
    return [{"role": "user", "content": PHRASINGS[phrasing].format(topic=topic)}]


def vocabulary() -> list[str]:
    """Every word the world's prompts, rubrics and answers use (without punctuation), in a fixed order."""
    words = (
        list(TOPICS)
        + list(CONTENT_WORDS)
        + list(KEY_WORDS)
        + list(FILLERS)
        + [CLOSING_WORD, *OTHER_CLOSERS, HEDGE_WORD]
    )
    for phrasing in PHRASINGS:
        words += phrasing.replace("{topic}", " ").replace(".", " ").replace("?", " ").split()
    words += "mentions the required forbidden word names topic ends with uses at most words".split() + [str(MAX_WORDS)]
    return list(dict.fromkeys(words))


@dataclass
class ToyWorld:
    """One instance of the world: train prompts and held-out prompts, each with a fixed rubric.

    Held-out prompts are about topics that no train prompt mentions, so they measure what a student generalises.
    Build one with [`make_world`].

    Attributes:
        seed: The seed it was made from.
        train_rows: Rows `{prompt, rubric, topic}`; `prompt` is a list of chat messages.
        heldout_rows: The same for the held-out prompts.
        train_topics: Topics of the train prompts.
        heldout_topics: Topics of the held-out prompts (disjoint from `train_topics`).
    """

    seed: int
    train_rows: list[dict[str, Any]]
    heldout_rows: list[dict[str, Any]]
    train_topics: tuple[str, ...]
    heldout_topics: tuple[str, ...]
    _judge: RuleJudge = field(default_factory=RuleJudge, repr=False)

    def train_dataset(self) -> Dataset:
        """The train prompts as a validated rubric dataset (through `load_rubric_dataset`, like any user data)."""
        return load_rubric_dataset(self.train_rows)

    def heldout_dataset(self) -> Dataset:
        """The held-out prompts as a validated rubric dataset."""
        return load_rubric_dataset(self.heldout_rows)

    def judge(self) -> RuleJudge:
        """A `RuleJudge` that grades this world's rubrics exactly, from their `rule:` tags."""
        return RuleJudge()

    def score(self, response: str, rubric: Any) -> float:
        """`Rubric.score` of `response` under the rule verdicts: 1.0 meets everything, below 0 is possible."""
        rubric = Rubric.from_any(rubric)
        return rubric.score(self._judge.verdicts(response, rubric))


def make_world(seed: int = 0, num_train: int = 64, num_heldout: int = 32, num_heldout_topics: int = 4) -> ToyWorld:
    """Build a deterministic toy world.

    Topics are split into train and held-out topics; prompts are (phrasing, topic) pairs drawn without replacement,
    each given one rubric from [`sample_rubric`]. The same arguments always give the same world.

    Args:
        seed: Seed of the topic split, the prompt choice and the rubrics.
        num_train: Number of train prompts (at most `len(PHRASINGS)` times the number of train topics).
        num_heldout: Number of held-out prompts (at most `len(PHRASINGS) * num_heldout_topics`).
        num_heldout_topics: How many topics are kept out of training.

    Returns:
        A [`ToyWorld`].
    """
    if not 1 <= num_heldout_topics < len(TOPICS):
        raise ValueError(f"num_heldout_topics is {num_heldout_topics}; expected 1 to {len(TOPICS) - 1}")
    rng = random.Random(f"trl-rubric-toy-world-{seed}")
    topics = list(TOPICS)
    rng.shuffle(topics)
    heldout_topics, train_topics = tuple(topics[:num_heldout_topics]), tuple(topics[num_heldout_topics:])

    def rows(topic_set: Sequence[str], n: int, split: str) -> list[dict[str, Any]]:
        pairs = [(t, p) for t in topic_set for p in range(len(PHRASINGS))]
        if not 1 <= n <= len(pairs):
            raise ValueError(f"num_{split} is {n}; this world has 1 to {len(pairs)} distinct {split} prompts")
        chosen = rng.sample(pairs, n)
        return [{"prompt": prompt_messages(t, p), "rubric": sample_rubric(rng, t), "topic": t} for t, p in chosen]

    return ToyWorld(
        seed=seed,
        train_rows=rows(train_topics, num_train, "train"),
        heldout_rows=rows(heldout_topics, num_heldout, "heldout"),
        train_topics=train_topics,
        heldout_topics=heldout_topics,
    )
