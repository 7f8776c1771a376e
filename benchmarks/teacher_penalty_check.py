"""What the penalised teacher prefers: the rubric-conditioned SmolLM2 teacher (health and science world, the recipe's
teacher view) answers the sweep's 48 x 2 train prompts with the teacher n-gram penalty (repeat 5, copy 5, penalty 10)
applied as a logits processor while sampling (temperature 0.7, 96 tokens); graded by the world's rule judge, with
degeneration flags from trl_rubric.evaluation.degeneration. Compare with a sweep's saved `teacher_train` answers
(same prompts, other sampling seeds). Usage: `python benchmarks/teacher_penalty_check.py OUT.json`."""

import json
import sys
import time

import torch
from datasets import concatenate_datasets
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

from trl_rubric.evaluation import select_examples
from trl_rubric.evaluation.degeneration import degeneration_rates
from trl_rubric.losses import teacher_bias as tb
from trl_rubric.real import smollm2_path
from trl_rubric.real.world import REAL_TEACHER_VIEW, make_real_world
from trl_rubric.teacher import build_teacher_prompt

torch.set_num_threads(1)
N_REPEAT, N_COPY, PENALTY = 5, 5, 10.0
out_path = sys.argv[1]
world = make_real_world(seed=0)
ds = concatenate_datasets([select_examples(world.train_dataset(), 48, 0)] * 2)
tok = AutoTokenizer.from_pretrained(smollm2_path())
tok.padding_side = "left"
model = AutoModelForCausalLM.from_pretrained(smollm2_path()).eval()
content = tb.content_token_ids(tok)
view = {k: v for k, v in REAL_TEACHER_VIEW.items()}


def chat(p):
    return tok.apply_chat_template(
        p if isinstance(p, list) else [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
    )


prompts, rubrics = list(ds["prompt"]), list(ds["rubric"])
tprompts = [
    build_teacher_prompt(
        p,
        r,
        template=view["teacher_prompt_template"],
        render_style=view["rubric_render_style"],
        penalties=view["teacher_penalties"],
    )
    for p, r in zip(prompts, rubrics, strict=True)
]


class Penalty(LogitsProcessor):
    def __init__(self, start, tables):
        self.start, self.tables = start, tables

    def __call__(self, input_ids, scores):
        for b in range(input_ids.size(0)):
            ids = [*input_ids[b, self.start :].tolist(), 0]
            t = len(ids) - 1
            banned = {tok_ for pos, tok_ in tb.repeated_ngram_bans(ids, N_REPEAT, content) if pos == t}
            banned |= {tok_ for pos, tok_ in tb.copy_ngram_bans(ids, self.tables[b], N_COPY) if pos == t}
            if banned:
                scores[b, list(banned)] -= PENALTY
        return scores


def run(penalised):
    texts = []
    for i in range(0, len(tprompts), 16):
        tp = [chat(p) for p in tprompts[i : i + 16]]
        sp = [chat(p) for p in prompts[i : i + 16]]
        enc = tok(tp, return_tensors="pt", padding=True, add_special_tokens=False)
        tables = [
            tb.teacher_only_ngrams(
                tok(a, add_special_tokens=False)["input_ids"],
                tok(b, add_special_tokens=False)["input_ids"],
                N_COPY,
                content,
            )
            for a, b in zip(tp, sp, strict=True)
        ]
        procs = LogitsProcessorList([Penalty(enc["input_ids"].size(1), tables)]) if penalised else None
        torch.manual_seed(1000 + i)
        with torch.no_grad():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=0.7,
                max_new_tokens=96,
                logits_processor=procs,
                pad_token_id=tok.pad_token_id,
            )
        texts += tok.batch_decode(out[:, enc["input_ids"].size(1) :], skip_special_tokens=True)
    return texts


sys.path.insert(0, "benchmarks")
from rgsd_sweep import criterion_rates  # noqa: E402

from trl_rubric.evaluation import evaluate  # noqa: E402

res = {}
judge = world.judge()
for name, pen in (("penalised", True),):
    t0 = time.time()
    texts = run(pen)
    ev = evaluate(None, ds, judge, tokenizer=tok, generate_fn=lambda ps, t=texts: t, progress=False, seed=1)
    res[name] = {
        "responses": texts,
        "scores": [ex["score"] for ex in ev.examples],
        "score": ev.metrics.weighted_score,
        "criteria": criterion_rates(ev.examples),
        "degeneration": degeneration_rates(texts, rubrics),
        "seconds": time.time() - t0,
    }
    json.dump(res, open(out_path, "w"), indent=1, default=str)
    print(name, res[name]["score"], res[name]["degeneration"], f"{time.time() - t0:.0f}s", flush=True)
