"""Speed and peak memory of one RGSD training step, against TRL's SDFTTrainer and against a student-only step.

What is timed, for every configuration: one loss forward (student and, where there is one, teacher) plus the
backward, on one fixed pre-generated batch; no generation and no optimizer step. Generation is the same
`model.generate` call for every trainer here, so it is done once, in its own process, and the same completion tokens are
fed to every configuration. Each configuration runs in a fresh process, so its peak resident memory is its own.

Configurations:

- `rgsd`: `RGSDTrainer.compute_loss` (full-vocabulary generalized JSD from hidden states: one autograd function over
  token chunks with one LM-head gradient buffer on CPU, TRL's fused kernel on CUDA) + backward. Frozen copy of the initial policy as teacher, seeing prompt + rubric.
- `sdft`: `trl.experimental.sdft.SDFTTrainer.compute_loss` with `distillation_mode="full_logits"` + backward. Same
  model files, same completion tokens, the same teacher prompt token for token (the rendered rubric is SDFT's
  `privileged_context` and its `teacher_prompt_template` is RGSD's), the same divergence (SDFT's `distillation_alpha`
  and RGSD's `distillation_beta` share one convention: 0 = forward KL(teacher‖student), 1 = reverse; both 0.5 here).
  RGSD's per-token clip is turned off and every completion has the same length, so both losses are the same number.
- `rgsd_cached_teacher`: `rgsd` with the teacher's hidden states computed once before timing; only the teacher's
  backbone forward is skipped (its LM-head projection still runs inside the divergence kernel).
- `student_only`: `GRPOTrainer._compute_loss` on the same trainer and batch (student forward, sampled-token log-probs
  over the full vocabulary with TRL's fused LM head, policy-gradient loss) + backward: a step of equal shape with no
  teacher at all.
- `rgsd_no_target_logps` (not run by default): `rgsd` without the two sampled-token log-prob passes that
  `token_divergence` runs when given `target_ids`; for the full support they only feed the `rgsd/teacher_logratio`
  metric. Same loss.

Peak memory is read with `resource.getrusage(RUSAGE_SELF).ru_maxrss` inside each child. After setup the child resets
the kernel's high-water mark (`/proc/self/clear_refs`, Linux), so the peak is the step's; the reported delta is that
peak minus the resident set just before the first step (models, trainer and batch already loaded). It is given twice:
over the warm-up and timed steps with the default allocator, and for one extra untimed step with glibc returning every
block of 1 MiB or more to the system on free (the "live" figure, close to the peak of live tensors; see `_measure`).

Run from the repository root:

    .venv/bin/python benchmarks/bench_rgsd_step.py --vocab-size 32768 --completion-length 512 --batch-size 4 --reps 3
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("rgsd", "sdft", "rgsd_cached_teacher", "student_only")
# Not run by default: RGSD without the two sampled-token log-prob passes that only feed the rgsd/teacher_logratio metric
EXTRA_MODES = ("rgsd_no_target_logps",)
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
from trl_rubric.testing import OFFLINE_ENV  # noqa: E402

ENV = {**OFFLINE_ENV, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab-size", type=int, default=32768, help="LM-head rows (tokenizer trained to this size).")
    p.add_argument("--completion-length", type=int, default=512, help="Completion tokens per sample (forced).")
    p.add_argument("--batch-size", type=int, default=4, help="Prompts per step (one completion each).")
    p.add_argument("--reps", type=int, default=3, help="Timed steps per configuration, after the warm-up.")
    p.add_argument("--warmup", type=int, default=1, help="Untimed steps per configuration (still in the peak).")
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=128, help="RGSD distillation_chunk_size (tokens per chunk).")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every child.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="Where the timed steps run (cuda: also GPU peak)."
    )
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES + EXTRA_MODES)
    p.add_argument("--workdir", default=None, help="Keep the model and batch here (default: a temp dir).")
    p.add_argument("--markdown", default=None, help="Also write the Markdown report to this file.")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------------
# Child side: memory probes
# ---------------------------------------------------------------------------------------------------------------------


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") // 1024


def _reset_peak() -> bool:
    # Writing 5 resets VmHWM, which getrusage's ru_maxrss reports for a live single-process program (Linux >= 4.0).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _measure(step, clear, warmup: int, reps: int) -> dict:
    """Time `warmup + reps` steps with the default allocator, then measure one more step's live peak.

    glibc keeps freed blocks below its (dynamic, up to 32 MiB) mmap threshold in the heap, so with the default
    allocator the RSS peak of a path that makes many mid-sized temporaries (RGSD's [chunk, V] tiles) depends on heap
    fragmentation and varies from run to run. For the extra step, blocks of 1 MiB or more are mmapped and returned on
    free, so its peak is close to the peak of live tensors. That step is not timed (page faults make it slower).
    """
    import torch

    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    clear()
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    setup_peak = _maxrss_kib()
    reset = _reset_peak()
    base = _rss_kib()
    times, cpu_times, losses = [], [], []
    for i in range(warmup + reps):
        t0, c0 = time.perf_counter(), time.process_time()
        losses.append(step())  # float(loss) synchronises a GPU
        if cuda:
            torch.cuda.synchronize()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        if i >= warmup:
            times.append(elapsed)
            cpu_times.append(cpu)
    result = {
        "times_s": times,
        "cpu_s": cpu_times,
        "loss": losses[-1],
        "peak_kib": _maxrss_kib(),
        "base_kib": base,
        "setup_peak_kib": setup_peak,
        "peak_reset": reset,
        "live_delta_kib": None,
        "cuda_peak_delta_kib": (torch.cuda.max_memory_allocated() - cuda_base) // 1024 if cuda else None,
    }
    libc = _glibc()
    if libc is not None and reset:
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
        clear()
        gc.collect()
        libc.malloc_trim(0)
        _reset_peak()
        live_base = _rss_kib()
        step()
        result["live_delta_kib"] = _maxrss_kib() - live_base
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Child side: building the model, the batch and the trainers
# ---------------------------------------------------------------------------------------------------------------------


def _corpus(rows, n_words: int, seed: int) -> list[str]:
    # Random letter strings give BPE enough distinct pairs to reach a 32k+ vocabulary; the row text is added so the
    # prompts and the teacher template tokenize into real merges rather than single bytes.
    from trl_rubric.teacher import DEFAULT_TEACHER_PROMPT_TEMPLATE

    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(n_words)]
    corpus = [" ".join(rng.choice(words) for _ in range(50)) for _ in range(n_words // 6)]
    row_text = [r["prompt"][-1]["content"] + "\n" + r["privileged_context"] for r in rows]
    return corpus + (row_text + [DEFAULT_TEACHER_PROMPT_TEMPLATE]) * 50


def _rows(n: int, seed: int) -> list[dict]:
    from trl_rubric.teacher import render_for_teacher
    from trl_rubric.testing import make_rubric_rows

    rows = make_rubric_rows(n, seed=seed, conversational=True)
    for row in rows:
        # RGSD's own view of the rubric (its default penalty handling included), so SDFT's teacher sees the same text
        row["privileged_context"] = render_for_teacher(row["rubric"])
    return rows


def _rgsd_config(args, workdir: Path, **overrides):
    from trl_rubric.trainers.rgsd import RGSDConfig

    kwargs = dict(
        output_dir=str(workdir / "out-rgsd"),
        use_cpu=args.device == "cpu",
        bf16=False,
        per_device_train_batch_size=args.batch_size,
        max_completion_length=args.completion_length,
        distillation_beta=0.5,
        distillation_support="full",
        distillation_chunk_size=args.chunk_size,
        token_clip=None,  # SDFT does not clip; the same objective on both sides
        teacher_model_kind="base",
        report_to="none",
        save_strategy="no",
        seed=args.seed,
    )
    kwargs.update(overrides)
    return RGSDConfig(**kwargs)


def _dataset(rows):
    from datasets import Dataset

    return Dataset.from_list(rows)


def child_prepare(args, workdir: Path) -> dict:
    """Build the tokenizer and model, then sample one batch with RGSD's own generation path, forced to full length."""
    import torch
    from transformers import AutoModelForCausalLM

    from trl_rubric.testing import make_tiny_model, make_tokenizer
    from trl_rubric.trainers.rgsd import RGSDTrainer

    rows = _rows(args.batch_size, args.seed)
    t0 = time.perf_counter()
    tokenizer = make_tokenizer(vocab_size=args.vocab_size, corpus=_corpus(rows, 40_000, args.seed))
    tokenizer_s = time.perf_counter() - t0
    model_path = workdir / "model"
    make_tiny_model(
        model_path,
        tokenizer=tokenizer,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        intermediate_size=2 * args.hidden_size,
        max_position_embeddings=4096 + args.completion_length,
        seed=args.seed,
    )
    if len(tokenizer) < args.vocab_size:
        # The LM-head cost is what is measured, so pad the model's vocabulary to the requested width.
        model = AutoModelForCausalLM.from_pretrained(model_path)
        model.resize_token_embeddings(args.vocab_size)
        model.save_pretrained(model_path)

    cfg = _rgsd_config(args, workdir, generation_kwargs={"min_new_tokens": args.completion_length})
    trainer = RGSDTrainer(str(model_path), args=cfg, train_dataset=_dataset(rows))
    t0 = time.perf_counter()
    with torch.no_grad():
        batch = trainer._generate_and_score_completions(rows)
    generate_s = time.perf_counter() - t0
    lengths = batch["completion_mask"].sum(1).tolist()
    if any(n != args.completion_length for n in lengths):
        raise RuntimeError(f"completions were not forced to {args.completion_length} tokens: {lengths}")
    torch.save({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}, workdir / "batch.pt")
    (workdir / "rows.json").write_text(json.dumps(rows))
    head = trainer.model.get_output_embeddings().weight
    return {
        "tokenizer_vocab": len(tokenizer),
        "model_vocab": int(head.shape[0]),
        "params": sum(p.numel() for p in trainer.model.parameters()),
        "prompt_tokens": int(batch["prompt_mask"].sum(1).max()),
        "teacher_prompt_tokens": int(batch["teacher_prompt_mask"].sum(1).max()),
        "tokenizer_s": tokenizer_s,
        "generate_s": generate_s,
    }


def _load_batch(workdir: Path, device: str = "cpu"):
    import torch

    batch = torch.load(workdir / "batch.pt", weights_only=True)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    return batch, json.loads((workdir / "rows.json").read_text())


def _step_fn(model, compute):
    def clear():
        model.zero_grad(set_to_none=True)

    def step():
        clear()
        loss = compute()
        loss.backward()
        return float(loss.detach())

    return step, clear


def child_rgsd(args, workdir: Path, mode: str) -> dict:
    import torch
    from trl import GRPOTrainer

    from trl_rubric.trainers.rgsd import RGSDTrainer

    batch, rows = _load_batch(workdir, args.device)
    trainer = RGSDTrainer(str(workdir / "model"), args=_rgsd_config(args, workdir), train_dataset=_dataset(rows))
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop; this step is called directly
    model = trainer.model
    model.train()
    if mode == "rgsd_no_target_logps":
        # What RGSD would cost if `_rgsd_loss` passed `target_ids` only where the loss needs them (sampled_token)
        from trl_rubric import losses

        full_divergence = losses.token_divergence

        def without_target_ids(*a, **kw):
            if kw.get("support") == "full":
                kw["target_ids"] = None
            return full_divergence(*a, **kw)

        losses.token_divergence = without_target_ids
    if mode in ("rgsd", "rgsd_no_target_logps"):

        def compute():
            return trainer.compute_loss(model, batch)

    elif mode == "rgsd_cached_teacher":
        with torch.no_grad():
            cached = trainer._separate_teacher_hidden(batch)
        trainer._separate_teacher_hidden = lambda inputs: cached

        def compute():
            return trainer.compute_loss(model, batch)

    else:  # student_only: GRPO's own loss on the same batch, with non-zero advantages so every term is live
        gen = torch.Generator().manual_seed(args.seed)
        batch["advantages"] = torch.randn(batch["advantages"].shape, generator=gen)

        def compute():
            return GRPOTrainer._compute_loss(trainer, model, batch)

    return _measure(*_step_fn(model, compute), args.warmup, args.reps)


def child_sdft(args, workdir: Path) -> dict:
    import torch
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    from trl_rubric.teacher import DEFAULT_TEACHER_PROMPT_TEMPLATE

    batch, rows = _load_batch(workdir, args.device)
    cfg = SDFTConfig(
        output_dir=str(workdir / "out-sdft"),
        use_cpu=args.device == "cpu",
        bf16=False,
        per_device_train_batch_size=args.batch_size,
        num_generations=1,
        max_prompt_length=None,
        max_completion_length=args.completion_length,
        distillation_mode="full_logits",
        distillation_alpha=0.5,  # same convention as RGSD's distillation_beta
        distillation_is_clip=None,
        teacher_model_kind="base",
        teacher_prompt_template=DEFAULT_TEACHER_PROMPT_TEMPLATE.replace("{rubric}", "{privileged_context}"),
        report_to="none",
        save_strategy="no",
        seed=args.seed,
    )
    trainer = SDFTTrainer(model=str(workdir / "model"), args=cfg, train_dataset=_dataset(rows))
    # SDFT's own context builder makes the teacher input; it must be RGSD's token for token.
    teacher = trainer.teacher_context_builder.build(
        [r["prompt"] for r in rows],
        [r["privileged_context"] for r in rows],
        batch["completion_ids"],
        batch["completion_mask"],
    )
    expected = torch.cat([batch["teacher_prompt_ids"], batch["completion_ids"]], dim=1)
    if not torch.equal(teacher["teacher_input_ids"], expected):
        raise RuntimeError("SDFT's teacher input differs from RGSD's; the comparison would not be fair")
    sdft_batch = {
        "prompt_ids": batch["prompt_ids"],
        "prompt_mask": batch["prompt_mask"],
        "completion_ids": batch["completion_ids"],
        "completion_mask": batch["completion_mask"],
        **teacher,
    }
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop; this step is called directly
    model = trainer.model
    model.train()
    return _measure(*_step_fn(model, lambda: trainer.compute_loss(model, sdft_batch)), args.warmup, args.reps)


def run_child(args) -> None:
    import torch

    # Generation is not measured; one thread keeps it quick on a busy shared machine (OpenMP barriers in tiny ops)
    torch.set_num_threads(1 if args.child == "prepare" else args.threads)
    torch.manual_seed(args.seed)
    workdir = Path(args.workdir)
    if args.child == "prepare":
        result = child_prepare(args, workdir)
    elif args.child == "sdft":
        result = child_sdft(args, workdir)
    else:
        result = child_rgsd(args, workdir, args.child)
    (workdir / f"result-{args.child}.json").write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------------------------------
# Parent side: one process per configuration, then the report
# ---------------------------------------------------------------------------------------------------------------------


def _spawn(args, mode: str, workdir: Path) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--workdir", str(workdir)]
    for flag in ("vocab_size", "completion_length", "batch_size", "reps", "warmup", "hidden_size", "layers"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    cmd += ["--chunk-size", str(args.chunk_size), "--threads", str(args.threads), "--seed", str(args.seed)]
    cmd += ["--device", args.device]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, **ENV})
    result = json.loads((workdir / f"result-{mode}.json").read_text())
    result["process_s"] = time.perf_counter() - t0
    print(f"[bench] {mode}: done in {result['process_s']:.0f}s", file=sys.stderr, flush=True)
    return result


def _machine() -> str:
    import torch
    import transformers
    import trl

    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{model}, {usable} usable cores (of {os.cpu_count()}), load average {load:.1f} at start; "
        f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"trl {trl.__version__}"
    )


def _mib(kib: float) -> float:
    return kib / 1024


def _median(r: dict, key: str) -> float:
    return statistics.median(r[key])


def _delta_kib(r: dict) -> int:
    return r["peak_kib"] - r["base_kib"]


def _fmt_mib(kib) -> str:
    return "n/a" if kib is None else f"{_mib(kib):.0f} MiB"


def _ratio(a, b) -> str:
    return "n/a" if a is None or b is None or b <= 0 else f"{a / b:.2f}"


def report(args, prep: dict, results: dict, machine: str, command: str) -> str:
    lines = [
        f"Machine: {machine}.",
        "",
        f"Command: `{command}`",
        "",
        f"Model: Qwen2, hidden {args.hidden_size}, {args.layers} layers, tied LM head, {prep['params'] / 1e6:.2f}M "
        f"parameters, vocabulary {prep['model_vocab']} (tokenizer {prep['tokenizer_vocab']}). Batch {args.batch_size} "
        f"x {args.completion_length} completion tokens (forced, no EOS), prompt {prep['prompt_tokens']} tokens, teacher "
        f"prompt {prep['teacher_prompt_tokens']} tokens, fp32, {args.threads} threads, RGSD chunk "
        f"{args.chunk_size} tokens, no token clip. Timed: loss forward + backward on one fixed batch, {args.warmup} "
        f"warm-up + {args.reps} timed steps, each configuration in its own process. Not timed: generation "
        f"({prep['generate_s']:.1f}s for this batch on 1 thread, the same `generate` for every trainer) and the "
        "optimizer step. Wall time is what a user waits; CPU time (all threads of the process) is less sensitive to "
        "other jobs on a shared machine. Peak RSS is `ru_maxrss` after setup; 'default malloc' is over the warm-up and "
        "timed steps; 'live' is one more step with glibc returning every block of 1 MiB or more on free.",
        "",
        "| configuration | wall / step, median (min) | CPU / step, median | peak RSS | peak - pre-step RSS, "
        "default malloc | peak - pre-step RSS, live | loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in args.modes:
        r = results[mode]
        lines.append(
            f"| {mode} | {_median(r, 'times_s'):.2f}s ({min(r['times_s']):.2f}s) | {_median(r, 'cpu_s'):.2f}s | "
            f"{_fmt_mib(r['peak_kib'])} | {_fmt_mib(_delta_kib(r))} | {_fmt_mib(r['live_delta_kib'])} | "
            f"{r['loss']:.6g} |"
        )
    if any(results[m].get("cuda_peak_delta_kib") is not None for m in args.modes):
        lines += ["", "| configuration | GPU peak allocated - pre-step allocated |", "|---|---|"]
        lines += [f"| {m} | {_fmt_mib(results[m].get('cuda_peak_delta_kib'))} |" for m in args.modes]
    if not all(results[m]["peak_reset"] for m in args.modes):
        lines += ["", "Warning: the peak could not be reset after setup; peaks include model loading."]

    lines += [
        "",
        "| ratio | wall time | CPU time | peak - pre-step RSS, default malloc | peak - pre-step RSS, live |",
        "|---|---|---|---|---|",
    ]
    pairs = [
        (
            "sdft",
            "rgsd",
            "SDFT / RGSD (memory target >= 5 at V=32,768, >= 10 at V=151,936; time >= 1, i.e. RGSD no slower)",
        ),
        ("rgsd", "rgsd_cached_teacher", "RGSD / RGSD with cached teacher hidden states (teacher backbone forward)"),
        ("rgsd", "student_only", "RGSD / student-only GRPO step (the whole teacher side; target <= 1.5)"),
        ("rgsd", "rgsd_no_target_logps", "RGSD / RGSD without the metric-only target log-prob passes"),
    ]
    for a, b, name in pairs:
        if a in results and b in results:
            ra, rb = results[a], results[b]
            lines.append(
                f"| {name} | {_ratio(_median(ra, 'times_s'), _median(rb, 'times_s'))} | "
                f"{_ratio(_median(ra, 'cpu_s'), _median(rb, 'cpu_s'))} | {_ratio(_delta_kib(ra), _delta_kib(rb))} | "
                f"{_ratio(ra['live_delta_kib'], rb['live_delta_kib'])} |"
            )
    if "sdft" in results and "rgsd" in results:
        a, b = results["sdft"]["loss"], results["rgsd"]["loss"]
        lines += [
            "",
            f"Same-objective check: SDFT loss {a:.6g}, RGSD loss {b:.6g} (relative gap {abs(a - b) / abs(b):.1e}).",
        ]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.update(ENV)
    if args.child:
        run_child(args)
        return
    command = " ".join([".venv/bin/python", "benchmarks/bench_rgsd_step.py", *sys.argv[1:]])
    machine = _machine()
    with tempfile.TemporaryDirectory(prefix="bench-rgsd-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        prep = _spawn(args, "prepare", workdir)
        results = {mode: _spawn(args, mode, workdir) for mode in args.modes}
        text = report(args, prep, results, machine, command)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    text += (
        f"\n\nTotal wall time of the benchmark: {time.perf_counter() - t0:.0f}s; load average {load:.1f} at the end."
    )
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
