"""Exact resume for GRPO-style trainers: a run resumed from a checkpoint trains on what the uninterrupted run would.

`GRPOTrainer` (TRL 1.16) loses two things across a checkpoint, on top of what `Trainer` restores (weights, optimizer,
scheduler, RNG states, step count):

- **Data order.** TRL's `RepeatSampler` seeds one generator once and draws a fresh permutation at every `__iter__`,
  so epoch e's order is the (e+1)-th draw. A resumed run builds a new sampler whose first draw is epoch 0's order:
  resumed in epoch 1 or later, the rest of that epoch repeats some prompts and skips others.
- **The generation buffer.** GRPO generates once every `steps_per_generation * num_iterations` micro-steps and trains
  on slices of that buffer in between. Neither the buffer nor its micro-step counter is saved, so a checkpoint that
  falls inside a generation round is resumed by generating afresh from the wrong dataloader batch, and the slice
  count restarts at 0.

[`ExactResumeMixin`] fixes both; `tests/test_resume.py` checks that losses and weights match the uninterrupted run.
"""

from __future__ import annotations

import os

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl.trainer.utils import RepeatSampler

#: Per-process generation buffer, written only when a checkpoint falls inside a generation round.
GENERATION_BUFFER_FILE = "generation_buffer_{rank}.pt"


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's `RepeatSampler` whose shuffle order depends on the epoch number, not on how often it was iterated.

    `Trainer` calls `set_epoch(epoch)` (through accelerate's dataloader, also after skipping the batches already
    trained) before each epoch; here that re-seeds the generator and replays the earlier draws, so epoch e gets the
    same order resumed or not, and the same order as TRL's sampler in an uninterrupted run.
    """

    def set_epoch(self, epoch: int) -> None:
        if not self.shuffle or self.seed is None:
            return  # unshuffled: nothing to restore; unseeded: no order to reproduce
        self.generator.manual_seed(self.seed)
        for _ in range(epoch):
            torch.randperm(self.num_samples, generator=self.generator)

    @classmethod
    def like(cls, sampler: RepeatSampler) -> EpochSeededRepeatSampler:
        return cls(
            data_source=sampler.data_source,
            mini_repeat_count=sampler.mini_repeat_count,
            batch_size=sampler.batch_size,
            repeat_count=sampler.repeat_count,
            shuffle=sampler.shuffle,
            seed=sampler.seed,
        )


class ExactResumeMixin:
    """Put before `GRPOTrainer` in a trainer's bases: resumable data order, and the generation buffer in checkpoints."""

    def _get_train_sampler(self, dataset=None):
        sampler = super()._get_train_sampler(dataset)
        return EpochSeededRepeatSampler.like(sampler) if type(sampler) is RepeatSampler else sampler

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        generate_every = self.args.steps_per_generation * self.num_iterations
        if self._buffered_inputs is None or self._step % generate_every == 0:
            return  # on a generation boundary the next step generates anyway: nothing to keep
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        # Each process keeps its own slice of the generation batch.
        buffer = [{k: v.cpu() if torch.is_tensor(v) else v for k, v in b.items()} for b in self._buffered_inputs]
        path = os.path.join(folder, GENERATION_BUFFER_FILE.format(rank=self.args.process_index))
        torch.save({"step": self._step, "buffer": buffer}, path)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, GENERATION_BUFFER_FILE.format(rank=self.args.process_index))
        if os.path.exists(path):
            saved = torch.load(path, map_location="cpu", weights_only=True)
            device = self.accelerator.device
            self._step = saved["step"]
            self._buffered_inputs = [
                {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()} for b in saved["buffer"]
            ]
