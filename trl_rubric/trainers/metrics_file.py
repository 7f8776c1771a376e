"""`MetricsFileCallback`: every logged metric also goes to `<output_dir>/metrics.jsonl`, whatever `report_to` says.

With `report_to: none` TRL prints the logs and keeps them only in `trainer_state.json` at checkpoints, so a run without
checkpoints leaves no metrics on disk. One JSON object per `on_log` call (training every `logging_steps`, evaluation,
the final summary), with `step` and `epoch`, written by the main process only.
"""

from __future__ import annotations

import json
import math
import os

from transformers import TrainerCallback

METRICS_FILE = "metrics.jsonl"


def _plain(value):
    # Tensors and numpy scalars become numbers; NaN/inf become strings, which JSON has no literal for.
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value if isinstance(value, (int, float, str, bool, type(None), list, dict)) else str(value)


class MetricsFileCallback(TrainerCallback):
    """Appends each log to `<output_dir>/metrics.jsonl`; a run starting from step 0 starts the file afresh, a resumed
    run appends to it."""

    def _path(self, args) -> str:
        return os.path.join(args.output_dir, METRICS_FILE)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step == 0 and os.path.exists(self._path(args)):
            os.remove(self._path(args))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        os.makedirs(args.output_dir, exist_ok=True)
        row = {"step": state.global_step, "epoch": state.epoch, **{k: _plain(v) for k, v in logs.items()}}
        with open(self._path(args), "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
