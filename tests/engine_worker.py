"""What each process runs in `tests/test_engines.py`: both trainers under FSDP2 or DeepSpeed ZeRO-3, on CPU (gloo).

    python -m torch.distributed.run --nproc_per_node N tests/engine_worker.py ENGINE MODEL OUT_DIR

ENGINE is `fsdp2`, `zero3` or `ddp`. RGSD runs with an EMA teacher (a separate, engine-prepared copy that is synced, saved and
restored), saves a checkpoint at step 1, and a second trainer resumes from it to step 2. RubricGRPO runs with a local
`TransformersJudge` (the tiny model, loaded while the engine is active) next to a length reward. Each rank writes
`OUT_DIR/rank{r}.json`: a hash of the full (gathered) weights, what the checkpoint held, and the logged losses.

    python -m torch.distributed.run --nproc_per_node 2 tests/engine_worker.py ENGINE MODEL OUT_DIR head

runs only one RGSD step with plain SGD at learning rate 1 and writes the LM head's gradient (its change) and the
sampled completions, to compare ZeRO-3's with DDP's on a model whose head is not tied to the embeddings.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import torch
from distributed_worker import common_args, length_reward  # the same short run; this folder is on sys.path

from trl_rubric.testing import make_rubric_rows, set_offline_env

set_offline_env()
torch.set_num_threads(1)


def engine_args(engine: str) -> dict:
    if engine == "ddp":
        return {}  # torchrun on CPU: Trainer wraps the model in DDP over gloo
    if engine == "fsdp2":
        return {
            "fsdp": "full_shard auto_wrap",
            "fsdp_config": {
                "fsdp_version": 2,
                "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                "transformer_layer_cls_to_wrap": ["Qwen2DecoderLayer"],
                "reshard_after_forward": True,
            },
        }
    return {
        "deepspeed": {
            "zero_optimization": {
                "stage": 3,
                "stage3_gather_16bit_weights_on_model_save": True,
                "stage3_param_persistence_threshold": 0,  # partition even tiny parameters
            },
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "zero_allow_untested_optimizer": True,
        }
    }


def full_params(model) -> dict[str, torch.Tensor]:
    """Every parameter in full on every rank (a collective): DTensors all-gathered, ZeRO-3 partitions gathered."""
    from torch.distributed.tensor import DTensor

    params = dict(model.named_parameters())
    if any(hasattr(p, "ds_id") for p in params.values()):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params.values())):
            return {k: p.detach().clone() for k, p in params.items()}
    return {k: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone() for k, p in params.items()}


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.removeprefix("module.").encode())
        h.update(tensors[name].cpu().float().numpy().tobytes())
    return h.hexdigest()


def run_rgsd(engine: str, model_path: str, out_dir: str) -> dict:
    from datasets import Dataset

    from trl_rubric.trainers.rgsd import RGSDConfig, RGSDTrainer

    rows = Dataset.from_list(make_rubric_rows(8))
    kw = dict(teacher_model_kind="ema", teacher_update_rate=0.5, save_strategy="steps", save_steps=1)
    full = RGSDTrainer(
        model_path, args=RGSDConfig(**common_args(out_dir, **engine_args(engine), **kw)), train_dataset=rows
    )
    head = full.accelerator.unwrap_model(full.model).get_output_embeddings().weight
    initial = digest(full_params(full.model))
    full.train()
    checkpoint = os.path.join(out_dir, "checkpoint-1")
    saved = torch.load(os.path.join(checkpoint, "rgsd_teacher.pt"), weights_only=True)

    # A fresh trainer resumes from step 1: the EMA teacher comes back from the file, and step 2 is redone
    resumed_dir = out_dir + "-resumed"
    resumed = RGSDTrainer(
        model_path, args=RGSDConfig(**common_args(resumed_dir, **engine_args(engine), **kw)), train_dataset=rows
    )  # fmt: skip
    resumed._load_teacher_state(checkpoint)  # the restore path alone, before any training
    teacher_loaded = full_params(resumed.accelerator.unwrap_model(resumed.teacher_model))
    loaded_matches = all(torch.equal(saved[k.removeprefix("module.")], v.cpu()) for k, v in teacher_loaded.items())
    resumed.train(resume_from_checkpoint=checkpoint)
    return {
        "engine_active": full.is_fsdp_enabled or full.is_deepspeed_enabled,
        "head_type": type(head).__name__,
        "head_numel": head.numel(),  # 0 for a ZeRO-3 partition
        "teacher_type": type(full.teacher_model).__name__,
        "initial_hash": initial,
        "hash": digest(full_params(full.model)),
        "resumed_hash": digest(full_params(resumed.model)),
        "resumed_step": resumed.state.global_step,
        "saved_teacher_shapes": sorted({tuple(t.shape) for t in saved.values()}),
        "saved_teacher_differs_from_init": digest(saved) != initial,
        "loaded_teacher_matches_file": loaded_matches,
        "losses": [e["loss"] for e in full.state.log_history if "loss" in e],
        "resumed_losses": [e["loss"] for e in resumed.state.log_history if "loss" in e],
    }


def run_rgsd_model_object(engine: str, model_path: str, out_dir: str) -> dict:
    """RGSD given a model object loaded while the ZeRO-3 config is active (its parameters empty partitions): the "base"
    teacher must hold the policy's weights, not an empty copy, and one step must move the LM head."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from trl_rubric.trainers.rgsd import RGSDConfig, RGSDTrainer

    args = RGSDConfig(**common_args(out_dir, **engine_args(engine), max_steps=1))  # activates ZeRO-3 for loading
    model = AutoModelForCausalLM.from_pretrained(model_path)
    partitioned = any(hasattr(p, "ds_id") for p in model.parameters())
    initial = full_params(model)
    trainer = RGSDTrainer(model, args=args, train_dataset=Dataset.from_list(make_rubric_rows(8)))
    teacher = full_params(trainer.accelerator.unwrap_model(trainer.teacher_model))
    head_name = next(n for n, p in model.named_parameters() if p is model.get_output_embeddings().weight)
    trainer.train()
    after = full_params(trainer.model)
    return {
        "loaded_partitioned": partitioned,
        "teacher_equals_initial_policy": teacher.keys() == initial.keys()
        and all(torch.equal(teacher[k], initial[k]) for k in initial),
        "teacher_shapes_full": all(t.numel() > 0 for t in teacher.values()),
        "head_moved": not torch.equal(after[head_name], initial[head_name]),
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
    }


def run_rgsd_bf16_ema(engine: str, model_path: str, out_dir: str) -> dict:
    """RGSD with a bf16 EMA teacher under ZeRO-3: each process keeps the fp32 shadow of its own partition only, saves
    it in its own file, and gets it back on resume."""
    from datasets import Dataset

    from trl_rubric.trainers.rgsd import RGSDConfig, RGSDTrainer

    rows = Dataset.from_list(make_rubric_rows(8))
    ds = engine_args(engine)
    ds["deepspeed"] = {**ds["deepspeed"], "bf16": {"enabled": "auto"}}
    kw = dict(teacher_model_kind="ema", teacher_update_rate=0.5, save_strategy="steps", save_steps=1, bf16=True)
    trainer = RGSDTrainer(model_path, args=RGSDConfig(**common_args(out_dir, **ds, **kw)), train_dataset=rows)
    trainer.train()
    teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)
    shadow = trainer._ema_callback.shadow
    partitions = [p.ds_tensor for p in teacher.parameters()]
    rank = int(os.environ["RANK"])
    saved = torch.load(os.path.join(out_dir, "checkpoint-1", f"rgsd_teacher_fp32_rank{rank}.pt"), weights_only=True)
    resumed = RGSDTrainer(model_path, args=RGSDConfig(**common_args(out_dir + "-r", **ds, **kw)), train_dataset=rows)
    resumed._load_teacher_state(os.path.join(out_dir, "checkpoint-1"))
    return {
        "teacher_dtype": str(partitions[0].dtype),
        "shadow_numel": sum(t.numel() for t in shadow.values()),
        "partition_numel": sum(p.numel() for p in partitions),
        "full_numel": sum(p.ds_numel for p in teacher.parameters()),
        "shadow_dtype": str(next(iter(shadow.values())).dtype) if shadow else None,
        "saved_numel": sum(t.numel() for t in saved.values()),
        "resumed_shadow_matches_file": set(resumed._ema_callback.shadow) == set(saved)
        and all(torch.equal(resumed._ema_callback.shadow[k].cpu(), v) for k, v in saved.items()),
        "teacher_is_rounded_shadow": all(
            torch.equal(partitions[k], t.to(partitions[k].dtype)) for k, t in shadow.items() if k >= 0
        ),
    }


def run_head_gradient(engine: str, model_path: str, out_dir: str, onset: bool = False) -> dict:
    """One RGSD step with plain SGD at learning rate 1 (no momentum, weight decay or clipping): the LM head's change is
    minus its gradient as the engine reduced it across processes. Returns it with the completions it came from. With
    `onset`, the step also carries `span_onset_weight`'s term on a key term every row has (its student log-prob is an
    autograd function of its own, which gathers a partitioned head in its backward pass)."""
    from datasets import Dataset

    from trl_rubric.trainers.rgsd import RGSDConfig, RGSDTrainer

    kw = dict(max_steps=1, optim="sgd", learning_rate=1.0, lr_scheduler_type="constant", max_grad_norm=0.0)
    rows = make_rubric_rows(8)
    if onset:
        kw.update(span_criteria=["key term"], span_onset_weight=20.0)
        term = {"text": "Mentions a doctor.", "weight": 2.0, "category": "essential", "title": "key term",
                "tags": [r"rule:regex:\bdoctor\b|fever"]}  # fmt: skip
        rows = [{**row, "rubric": [*row["rubric"], term]} for row in rows]
    args = RGSDConfig(**common_args(out_dir, **engine_args(engine), **kw))
    trainer = RGSDTrainer(model_path, args=args, train_dataset=Dataset.from_list(rows))
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    head, embed = unwrapped.get_output_embeddings().weight, unwrapped.get_input_embeddings().weight
    head_name = next(n for n, p in trainer.model.named_parameters() if p is head)
    completions = []
    generate = trainer._generate_and_score_completions

    def recording_generate(inputs):
        out = generate(inputs)
        completions.append(out["completion_ids"].tolist())
        return out

    trainer._generate_and_score_completions = recording_generate
    before = full_params(trainer.model)
    trainer.train()
    after = full_params(trainer.model)
    return {
        "head_untied": head is not embed,
        "head_partitioned": head.numel() == 0,
        "head_grad": (before[head_name] - after[head_name]).flatten().tolist(),
        "completions": completions,
    }


def run_grpo(engine: str, model_path: str, out_dir: str) -> dict:
    from datasets import Dataset

    from trl_rubric.judges import TransformersJudge
    from trl_rubric.trainers.rubric_grpo import RubricGRPOConfig, RubricGRPOTrainer

    args = RubricGRPOConfig(
        **common_args(out_dir, **engine_args(engine)), num_generations=2, judge_backend="rule",
        min_graded_fraction=0.0,  # the rule judge checks only the added criterion; the rest are unknown
    )  # fmt: skip
    rows = make_rubric_rows(8)
    for row in rows:  # a check random completions often pass, so groups can differ
        row["rubric"].append({"text": "has an e", "weight": 1.0, "category": None, "title": None, "tags": ["rule:contains:e"]})  # fmt: skip
    trainer = RubricGRPOTrainer(
        model_path, reward_funcs=[length_reward], args=args, train_dataset=Dataset.from_list(rows)
    )  # fmt: skip
    # A local judge model loaded while the engine is active must come out whole on every process
    judge = TransformersJudge(model_path, max_new_tokens=2)
    judge_reply = judge._generate([[{"role": "user", "content": "hello"}]])[0]
    initial = digest(full_params(trainer.model))
    trainer.train()
    return {
        "initial_hash": initial,
        "hash": digest(full_params(trainer.model)),
        "judge_calls": trainer.judge.stats.calls,
        "local_judge_partitioned": any(hasattr(p, "ds_id") for p in judge.model.parameters()),
        "local_judge_generated": judge_reply.completion_tokens,
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
    }


def main(argv: list[str]) -> None:
    engine, model_path, out_dir, *only = argv
    rank = int(os.environ["RANK"])
    if only in (["head"], ["head_onset"]):
        head = run_head_gradient(engine, model_path, os.path.join(out_dir, only[0]), onset=only == ["head_onset"])
        result = {"rank": rank, "head": head}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
        return
    result = {
        "rank": rank,
        "rgsd": run_rgsd(engine, model_path, os.path.join(out_dir, "rgsd")),
        "grpo": run_grpo(engine, model_path, os.path.join(out_dir, "grpo")),
    }
    if engine == "zero3":
        result["rgsd_object"] = run_rgsd_model_object(engine, model_path, os.path.join(out_dir, "rgsd_object"))
        try:
            result["rgsd_bf16"] = run_rgsd_bf16_ema(engine, model_path, os.path.join(out_dir, "rgsd_bf16"))
        except Exception as e:  # reported by the test: what fails in bf16 on CPU
            result["rgsd_bf16"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1:])
