"""The decoding-time guard (`trl_rubric.evaluation.DegenerationGuard`): its next-token bans against a plain rule, the
processor on logits, and decoding with it through `generate_responses`, `evaluate` and `trl-rubric eval`."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

from trl_rubric.evaluation import (
    DegenerationGuard,
    EvaluationError,
    evaluate,
    generate_responses,
)
from trl_rubric.evaluation.generation import _prompt_ids
from trl_rubric.evaluation.guard import next_token_bans
from trl_rubric.judges import RuleJudge

# A small vocabulary with real texts: markers, breaks and words.
TEXTS = ["1", "2", ".", " ", "\n", ".\n", "Drink", " water", " daily", " rest", "-", " -", "\n\n", " 3"]
CONTENT = frozenset(i for i, t in enumerate(TEXTS) if any(c.isalpha() for c in t))


class TextTokenizer:
    """The two things the guard reads from a tokenizer: its size and each token's text."""

    def __init__(self, texts):
        self.texts = texts

    def __len__(self):
        return len(self.texts)

    def decode(self, ids, **_):
        return "".join(self.texts[i] for i in ids)


def plain_next_bans(completion, n):
    """The rule read literally, for the next token only: a token is banned if, appended, it completes an n-gram (two
    or more word tokens) that occurs earlier in the answer, or if the answer's last line is list markers only and
    the token ends that line or starts a second, spaced marker."""
    banned = set()
    for tok in range(len(TEXTS)):
        ids = [*completion, tok]
        gram = ids[-n:]
        earlier = [ids[i : i + n] for i in range(len(ids) - n)]
        if n and len(ids) > n and gram in earlier and sum(t in CONTENT for t in gram) >= min(2, n):
            banned.add(tok)
        line = "".join(TEXTS[i] for i in completion).split("\n")[-1]
        if re.fullmatch(r"\s*(?:(?:[-*•+]|\d{1,3}[.)])\s*)+", line):
            text = TEXTS[tok]
            if "\n" in text and not any(c.isalnum() for c in text.split("\n")[0]):
                banned.add(tok)
            if text.strip() and (text.strip().isdigit() or text.strip() in "-•+"):
                if line.endswith(" ") or text.startswith(" "):
                    banned.add(tok)
    return banned


@pytest.mark.parametrize("n", [0, 2, 3, 4])
def test_next_token_bans_equal_the_plain_rule(n):
    guard = DegenerationGuard(TextTokenizer(TEXTS), no_repeat_ngram_size=n)
    rng = random.Random(n)
    for _ in range(300):
        completion = [rng.randrange(len(TEXTS)) for _ in range(rng.randrange(0, 16))]
        got = next_token_bans(completion, n, guard.content_tokens, guard.empty_items)
        assert set(got) == plain_next_bans(completion, n), completion


def test_processor_bans_repeats_of_the_answer_but_not_of_the_prompt_and_resets():
    guard = DegenerationGuard(TextTokenizer(TEXTS), no_repeat_ngram_size=3)
    drink, water, daily, one, dot, space = 6, 7, 8, 0, 2, 3
    # The prompt says "Drink water daily"; the answer so far is "Drink water": quoting the prompt stays free.
    prompt = [drink, water, daily, 4]
    scores = guard(torch.tensor([prompt]), torch.zeros(1, len(TEXTS)))
    assert torch.isfinite(scores).all()  # first call: the answer is empty
    scores = guard(torch.tensor([[*prompt, drink, water]]), torch.zeros(1, len(TEXTS)))
    assert torch.isfinite(scores).all()
    # The answer itself held "Drink water daily" already: "daily" after "Drink water" is banned, nothing else.
    ids = [*prompt, drink, water, daily, 4, drink, water]
    scores = guard(torch.tensor([ids]), torch.zeros(1, len(TEXTS)))
    assert torch.isinf(scores[0]).nonzero().flatten().tolist() == [daily]
    # A new generation after reset(): "1. " with the marker bans, on two rows of a batch.
    guard.reset()
    batch = torch.tensor([[*prompt, 4, 4], [*prompt, drink, water]])
    guard(batch, torch.zeros(2, len(TEXTS)))
    scores = guard(torch.cat([batch, torch.tensor([[one, dot, space], [daily, 4, drink]])], 1), torch.zeros(2, 14))
    banned = [set(torch.isinf(row).nonzero().flatten().tolist()) for row in scores]
    assert {one, 1, TEXTS.index(" 3"), TEXTS.index(" -"), 4, 5, 12} <= banned[0]  # no "1. 1", no "1. \n"
    assert banned[1] == set()


def test_guard_options_are_checked():
    with pytest.raises(EvaluationError, match="expected 0"):
        DegenerationGuard(TextTokenizer(TEXTS), no_repeat_ngram_size=-1)
    with pytest.raises(EvaluationError, match="does nothing"):
        DegenerationGuard(TextTokenizer(TEXTS), 0, ban_empty_items=False, ban_doubled_markers=False,
                          ban_repeated_lines=False, ban_piece_loops=False)  # fmt: skip


PROMPTS = ["hi", "explain the fever dose risk for the patient in detail", "why does the gene matter"]


def test_decoding_with_the_guard_never_repeats_a_word_ngram_of_the_answer(tiny):
    import copy

    model, tokenizer = tiny
    guard = DegenerationGuard(tokenizer, no_repeat_ngram_size=2)
    content = guard.content_tokens
    # A model that loops on words: a bias on the head makes four word tokens far likelier than the rest.
    model = copy.deepcopy(model)
    bias = torch.zeros(model.lm_head.out_features)
    words = [
        i for i in sorted(content) if i not in tokenizer.all_special_ids and tokenizer.decode([i]).strip().isalpha()
    ]
    bias[words[:4]] = 20.0
    model.lm_head.bias = torch.nn.Parameter(bias)

    def repeats(ids):
        grams = [tuple(ids[i : i + 2]) for i in range(len(ids) - 1) if sum(t in content for t in ids[i : i + 2]) >= 2]
        return len(grams) - len(set(grams))

    plain = generate_responses(model, tokenizer, PROMPTS, 40, 2, temperature=0, progress=False)
    guarded = generate_responses(model, tokenizer, PROMPTS, 40, 2, temperature=0, progress=False,
                                 degeneration_guard=2)  # fmt: skip
    assert sum(repeats(ids) for ids in plain.token_ids) > 0  # the tiny model loops: something to remove
    assert all(repeats(ids) == 0 for ids in guarded.token_ids)
    # Batched decoding with a reset per batch equals decoding each prompt alone with a fresh guard.
    for prompt, ids in zip(PROMPTS, guarded.token_ids, strict=True):
        from transformers import LogitsProcessorList

        x = torch.tensor([_prompt_ids(tokenizer, prompt)])
        out = model.generate(x, max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.pad_token_id or 0,
                             logits_processor=LogitsProcessorList([DegenerationGuard(tokenizer, 2)]))  # fmt: skip
        alone = out[0, x.shape[1] :].tolist()
        eos = tokenizer.eos_token_id
        assert ids == (alone[: alone.index(eos)] if eos in alone else alone)


def test_evaluate_and_the_cli_decode_with_the_guard_and_record_it(tiny, tiny_model_path, tmp_path, capsys):
    from trl_rubric.cli import main

    model, tokenizer = tiny
    rubric = [{"text": "mentions fever", "weight": 1.0, "category": "essential", "tags": ["rule:contains:fever"]}]
    rows = [{"prompt": p, "rubric": rubric} for p in PROMPTS]
    result = evaluate(model, rows, RuleJudge(), tokenizer=tokenizer, max_new_tokens=30, temperature=0, progress=False,
                      degeneration_guard=2)  # fmt: skip
    # Recorded with every option spelled out: a later change of the defaults cannot pass for the same decoding.
    assert result.config["degeneration_guard"] == {"no_repeat_ngram_size": 2, "ban_empty_items": True,
                                                   "ban_doubled_markers": True, "ban_repeated_lines": True,
                                                   "ignore_case": True, "ban_piece_loops": True}  # fmt: skip
    expected = generate_responses(model, tokenizer, PROMPTS, 30, 8, temperature=0, progress=False,
                                  degeneration_guard=2).texts  # fmt: skip
    assert [ex["response"] for ex in result.examples] == expected
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    code = main(["eval", "--model_name_or_path", tiny_model_path, "--dataset_name", str(data), "--judge_backend",
                 "rule", "--max_completion_length", "30", "--temperature", "0", "--bootstrap_samples", "0",
                 "--plots", "false", "--progress", "false", "--degeneration_guard", "2", "--output_dir", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert (
        json.loads((out / "results.json").read_text())["config"]["degeneration_guard"]
        == result.config["degeneration_guard"]
    )
    lines = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert [r["response"] for r in lines] == expected
    for bad, message in ((["--degeneration_guard", "-1"], "expected 0"), (["--use_vllm", "true", "--degeneration_guard",
                                                                           "3"], "--use_vllm")):  # fmt: skip
        code = main(["eval", "--model_name_or_path", tiny_model_path, "--dataset_name", str(data),
                     "--judge_backend", "rule", "--output_dir", str(tmp_path / "bad"), *bad])  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and message in err and "degeneration_guard" in err


@pytest.mark.parametrize(
    ("text", "banned"),
    [
        ("1. Never.\n2. Never.", True),  # a one-word item again under a new number
        ("1. Never.\n2. Ever.", False),
        ("1. Never.\n2. **never**", True),  # emphasis and case stripped, as the repeat check strips them
        ("1. (I)", True),  # markers and no word: an empty item the token-level marker bans do not know
        ("Rest well. Drink water.\ndrink water", True),  # repeats an earlier sentence
        ("1. Drink water.\n2. Drink", False),  # the line is not finished repeating
        ("2022-03-02 09:20\n2022-03-02 09:20", True),
        ("Tips:\n", False),  # an empty line after a heading: paragraph breaks stay free
        ("", False),
    ],
)
def test_line_end_banned_follows_the_repeat_check(text, banned):
    from trl_rubric.evaluation.degeneration import repeats_line
    from trl_rubric.evaluation.guard import line_end_banned

    assert line_end_banned(text) is banned
    if banned and "(I)" not in text:
        # Ending the line there writes an answer the repeat check flags (short units need three, so compare whole).
        assert repeats_line(text + "\n", min_words=1, short_repeats=2)


# Words, markers, breaks, and an end-of-answer token (id 11).
LINE_TEXTS = ["1", "2", ".", " ", "\n", ".\n", "Never", " never", " Oh", ",", " oh", "<eos>"]


class EosTokenizer(TextTokenizer):
    eos_token_id = 11


def test_repeated_line_bans_cover_every_line_end_and_the_answer_end():
    guard = DegenerationGuard(EosTokenizer(LINE_TEXTS), no_repeat_ngram_size=0, ban_empty_items=False,
                              ban_doubled_markers=False, ban_repeated_lines=True)  # fmt: skip
    one, two, dot, space, nl, dot_nl, never = 0, 1, 2, 3, 4, 5, 6
    answer = [one, dot, space, never, dot, nl, two, dot, space, never]  # "1. Never.\n2. Never"
    assert guard.bans(answer) == {nl, dot_nl, 11}
    assert guard.bans([*answer, dot]) == {nl, dot_nl, 11}
    assert guard.bans(answer[:6]) == set()  # the first "Never" ends freely
    assert guard.settings()["ban_repeated_lines"] is True


def test_ignore_case_bans_equal_the_plain_rule_on_lowercased_words():
    """Under ignore_case a token is banned iff, appended, the last n tokens' texts (lower case, spaces stripped)
    equal an earlier n-gram of the answer's, two or more of them words."""
    n = 3
    guard = DegenerationGuard(EosTokenizer(LINE_TEXTS), no_repeat_ngram_size=n, ban_empty_items=False,
                              ban_doubled_markers=False, ban_repeated_lines=False)  # fmt: skip
    key = [t.strip().lower() or f"<space {i}>" for i, t in enumerate(LINE_TEXTS)]
    words = {i for i, t in enumerate(LINE_TEXTS) if any(c.isalpha() for c in t)}
    rng = random.Random(0)
    hits = 0
    for _ in range(400):
        answer = [rng.choice([2, 3, 6, 7, 8, 9, 10]) for _ in range(rng.randrange(0, 12))]
        expected = set()
        for tok in range(len(LINE_TEXTS)):
            ids = [*answer, tok]
            gram = [key[i] for i in ids[-n:]]
            earlier = [[key[i] for i in ids[j : j + n]] for j in range(len(ids) - n)]
            if len(ids) > n and gram in earlier and sum(i in words for i in ids[-n:]) >= 2:
                expected.add(tok)
        assert guard.bans(answer) == expected, answer
        hits += bool(expected - DegenerationGuard(EosTokenizer(LINE_TEXTS), n, ignore_case=False).bans(answer))
    assert hits > 20  # often a ban the case-sensitive guard misses ("Oh, oh" then ", Oh")


def test_build_guard_takes_a_size_or_its_options_and_refuses_unknown_ones():
    from trl_rubric.evaluation.generation import build_guard

    tok = EosTokenizer(LINE_TEXTS)
    guard = build_guard(tok, {"no_repeat_ngram_size": 4, "ban_repeated_lines": True}, eos_token_ids=[11])
    assert guard.settings() == {"no_repeat_ngram_size": 4, "ban_empty_items": True, "ban_doubled_markers": True,
                                "ban_repeated_lines": True, "ignore_case": True, "ban_piece_loops": True}  # fmt: skip
    assert 11 in guard.line_enders
    assert build_guard(tok, 2).settings() == {"no_repeat_ngram_size": 2, "ban_empty_items": True,
                                              "ban_doubled_markers": True, "ban_repeated_lines": True,
                                              "ignore_case": True, "ban_piece_loops": True}  # fmt: skip
    with pytest.raises(EvaluationError, match="unknown option"):
        build_guard(tok, {"no_repeat_ngram_size": 3, "ban_loops": True})
    with pytest.raises(EvaluationError, match="expected an n-gram size"):
        build_guard(tok, True)


def test_mass_removed_is_the_probability_of_the_banned_tokens_and_finished_rows_are_left_alone():
    guard = DegenerationGuard(EosTokenizer(LINE_TEXTS), no_repeat_ngram_size=0, ban_empty_items=False,
                              ban_doubled_markers=False, ban_repeated_lines=True, eos_token_ids=[11])  # fmt: skip
    one, two, dot, space, nl, dot_nl, never = 0, 1, 2, 3, 4, 5, 6
    prompt = [space, space]
    guard(torch.tensor([prompt, prompt]), torch.zeros(2, len(LINE_TEXTS)))
    looped = [*prompt, one, dot, space, never, dot, nl, two, dot, space, never, dot]
    finished = [*prompt, never, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11]
    scores = torch.randn(2, len(LINE_TEXTS), generator=torch.Generator().manual_seed(0))
    expected = float(scores[0].softmax(-1)[[nl, dot_nl, 11]].sum())
    out = guard(torch.tensor([looped, finished]), scores.clone())
    assert guard.mass_removed == pytest.approx(expected)
    assert torch.isinf(out[0, [nl, dot_nl, 11]]).all() and torch.isfinite(out[1]).all()


def test_ids_past_the_tokenizer_vocabulary_are_their_own_class():
    # A model head padded wider than the tokenizer samples an id the tokenizer has no text for: no crash, no ban.
    guard = DegenerationGuard(EosTokenizer(LINE_TEXTS), no_repeat_ngram_size=3)
    far = len(LINE_TEXTS) + 5
    assert guard.bans([8, far, 9, 10, far, 9]) == set()  # " Oh" ? "," " oh" ? ",": one word per trigram
    assert guard.bans([8, 10, far, 8, 10]) == {far}  # "Oh oh ? Oh oh" -> "?" would repeat "oh oh ?"


def _leading_letters(text):
    return re.match(r"[^\W\d_]*", text).group(0)


def test_piece_loop_bans_equal_the_check_on_the_word_being_written():
    """A token (up to three letters, as a looping model writes them) is banned iff, appended, the word being written
    loops on a piece of itself as `repeats_line` counts it, and that word did not loop before."""
    from trl_rubric.evaluation.degeneration import _piece_loops
    from trl_rubric.evaluation.guard import letter_tail

    texts = ["a", "b", "ab", "ba", "aba", "bab", "A", "Ab", "abb", " a", " ab", ".", "a.", "ab ", "\n", "1", "a1"]
    guard = DegenerationGuard(TextTokenizer(texts), no_repeat_ngram_size=0, ban_empty_items=False,
                              ban_doubled_markers=False, ban_repeated_lines=False, ban_piece_loops=True)  # fmt: skip
    rng = random.Random(0)
    checked = banned_seen = 0
    for _ in range(600):
        # random tokens, then (often) one piece repeated: the words that come near a loop
        answer = [rng.randrange(len(texts)) for _ in range(rng.randrange(0, 6))]
        answer += [rng.randrange(6)] * rng.choice([0, 2, 3, 4, 5, 7])
        answer += [rng.randrange(len(texts)) for _ in range(rng.randrange(0, 3))]
        word = letter_tail("".join(texts[i] for i in answer))
        if _piece_loops(word):
            continue
        checked += 1
        expected = {tok for tok, text in enumerate(texts) if _piece_loops(word + _leading_letters(text).lower())}
        assert guard.bans(answer) == expected, (word, [texts[i] for i in expected])
        banned_seen += bool(expected)
    assert checked > 300 and banned_seen > 30


def test_piece_loop_bans_stop_a_word_looping_and_leave_words_alone():
    texts = ["Hug", "ging", " Face", "Face", "face", "Faces", "F", "ace", " face", ".", "ate", " a"]
    guard = DegenerationGuard(TextTokenizer(texts), no_repeat_ngram_size=0)
    hug, ging, sp_face, face, lface, faces, f, ace, sp_lface, dot, ate, sp_a = range(len(texts))
    # "Hugging FaceFaceFace": a fourth piece, however it is spelled or split, is banned; a space or a stop is not.
    written = [hug, ging, sp_face, face, lface]
    assert guard.bans(written) == {face, lface, faces}
    assert guard.bans([*written, f]) == {ace}  # "F" starts the fourth piece; "ace" would finish it
    assert not guard.bans([hug, ging, sp_face]) & {face, lface, faces, sp_lface}
    # the teacher-side bans (teacher_guard) read the same guard at every position
    from trl_rubric.trainers.teacher_shaping import guard_bans

    assert {(5, face), (5, lface), (5, faces)} <= set(guard_bans(guard, [*written, sp_lface]))
    # "ateateate" then "ate" loops; off, nothing is banned
    assert ate in guard.bans([sp_a, ate, ate, ate])
    off = DegenerationGuard(TextTokenizer(texts), no_repeat_ngram_size=0, ban_piece_loops=False)
    assert off.bans(written) == set() and off.settings()["ban_piece_loops"] is False
