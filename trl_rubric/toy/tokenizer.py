"""The toy world's tokenizer: Qwen2-style ByteLevel BPE whose merges make every known word a single token.

Why not a `WordLevel` model: transformers 5 reloads any `model_type: qwen2` checkpoint through `Qwen2Tokenizer`,
which rebuilds a ByteLevel BPE pipeline from the saved vocab and merges and ignores a WordLevel `tokenizer.json`, so a
word-level tokenizer would silently turn into a different one after `AutoTokenizer.from_pretrained` (as TRL loads
it). Instead we build exactly the pipeline `Qwen2Tokenizer` rebuilds, and train its merges on the world's words and
the teacher template until each word is one token. That keeps what a word-level tokenizer gives (short sequences,
a rubric word is one token the model can copy) and adds byte fallback, so no text ever becomes an unknown token.

A word has two forms, `"apple"` and `" apple"` (after a space). Answers start with a space, so every answer word,
and every rubric word it might copy, uses the spaced form.
"""

from __future__ import annotations

import string
from functools import lru_cache

from ..rubric import GOOD_ANSWER_AVOIDS, GOOD_ANSWER_CONTAINS
from ..teacher import DEFAULT_TEACHER_PROMPT_TEMPLATE
from ..testing import CHATML_TEMPLATE, SPECIAL_TOKENS
from .world import PHRASINGS, vocabulary

_ROLES = ("system", "user", "assistant")


def _corpus(extra_texts: tuple[str, ...]) -> list[str]:
    words = [*_ROLES, *vocabulary()]
    for text in (*extra_texts, GOOD_ANSWER_CONTAINS, GOOD_ANSWER_AVOIDS):
        words += text.replace("{prompt}", " ").replace("{rubric}", " ").split()
    # Punctuation glued to words in the template ("criteria):") is split off by the Qwen regex, but runs of marks
    # stay together, so the raw texts are in the corpus as well as the bare and spaced forms of every word.
    # Runs such as ".\n\n" (prompt end, blank line) come from filling the template, so fill it once per phrasing.
    # A rubric with penalties renders as two headed lists.
    rubrics = ("1. x\n2. x", f"{GOOD_ANSWER_CONTAINS}\n1. x\n{GOOD_ANSWER_AVOIDS}\n2. x")
    filled = [
        t.replace("{prompt}", p.format(topic="x")).replace("{rubric}", r)
        for t in extra_texts
        for p in PHRASINGS
        for r in rubrics
    ]
    return [
        " ".join(words),
        "\n".join(words),
        *extra_texts,
        *filled,
        " ".join(string.digits + string.punctuation),
    ]


@lru_cache(maxsize=4)
def _vocab_and_merges(extra_texts: tuple[str, ...]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    import json

    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # The same normaliser and pre-tokeniser as Qwen2Tokenizer, so the merges we learn are the merges it applies.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    # An unreachable vocab_size lets BPE merge until no pair is left: every corpus piece ends as one token.
    trainer = trainers.BpeTrainer(
        vocab_size=1_000_000,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(extra_texts), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def build_toy_tokenizer(extra_texts: tuple[str, ...] = (DEFAULT_TEACHER_PROMPT_TEMPLATE,)):
    """The toy world's ChatML tokenizer, as the `Qwen2Tokenizer` that `AutoTokenizer` reloads it as.

    Every word of the world and of `extra_texts` (by default the RGSD teacher template) is a single token, in both
    its bare and spaced form; other text falls back to bytes. eos `<|im_end|>`, pad `<|endoftext|>`, left padding,
    chat template `trl_rubric.testing.CHATML_TEMPLATE`. Deterministic.

    Args:
        extra_texts: Texts whose words must be single tokens besides the world's own.

    Returns:
        A `transformers` `Qwen2Tokenizer`.
    """
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    vocab, merges = _vocab_and_merges(tuple(extra_texts))
    tokenizer = Qwen2Tokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        bos_token=None,
        padding_side="left",
    )
    # <|im_start|> is neither eos nor pad, so register it, or the regex would cut it into "<|", "im", "_start", "|>".
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer
