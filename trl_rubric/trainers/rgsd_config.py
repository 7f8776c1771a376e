"""[`RGSDConfig`]: every `GRPOConfig` field plus the RGSD fields, documented where declared, and their checks.

As TRL keeps `grpo_config.py` apart from `grpo_trainer.py`; the trainer lives in `rgsd.py`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Literal

from trl import GRPOConfig

from .. import losses
from ..criterion_views import CRITERION_GROUPINGS, CRITERION_VIEW_WEIGHTS
from ..judge_share import check_judge_share
from ..multi_teacher import TEACHER_COMBINES
from ..rewards import check_criteria, check_degenerate_reward
from ..rubric import PITFALL_POLARITIES, RENDER_STYLES
from ..teacher import (
    DEFAULT_TEACHER_PENALTIES,
    DEFAULT_TEACHER_PROMPT_TEMPLATE,
    TEACHER_MODEL_KINDS,
    TEACHER_PENALTIES,
)
from ..teacher_context import TEACHER_CONTEXT_PRESETS, apply_preset
from ..teacher_focus import TEACHER_FOCUS_MODES, check_teacher_focus_settings
from .rgsd_spans import check_span_settings
from .teacher_shaping import DEFAULT_TEACHER_TOP_K_FLOOR, check_teacher_shaping

logger = logging.getLogger(__name__)

DISTILLATION_SUPPORTS = ("full", "topk", "sampled_token")
TOKEN_CLIP_MODES = ("clamp", "scale", "per_entry")
#: The clip default, in one place, chosen on SmolLM2 (docs/benchmarks.md): no clip. The default JSD (beta 0.5) is
#: bounded by ln 2 per token, so the clip is not needed for stability, and at a learning rate that learns it cost gain.
DEFAULT_TOKEN_CLIP: float | None = None
DEFAULT_TOKEN_CLIP_MODE = "clamp"
#: Warn (once) when more than this fraction of the loss tokens in a logging window were clipped.
# Fields a teacher-context preset may set (see `teacher_context.TEACHER_CONTEXT_PRESETS`).
RGSD_PRESET_FIELDS = {key for preset in TEACHER_CONTEXT_PRESETS.values() for key in preset.settings}


@dataclass
class RGSDConfig(GRPOConfig):
    r"""
    Configuration for [`RGSDTrainer`]: every [`~trl.GRPOConfig`] field, plus the fields below.

    Rubric-Guided Self-Distillation (arXiv 2606.12507) samples one completion per prompt and distils a
    rubric-conditioned teacher into the prompt-only student, so `num_generations` defaults to 1 here, and no reward
    function is needed.

    > Parameters that control the teacher

        teacher_model_kind (`str`, *optional*, defaults to `"base"`):
            Which weights score the completions. `"base"`: the frozen initial policy (the paper's choice; with a PEFT
            model, the same model with adapters disabled, so no copy). `"ema"`: an exponential moving average of the
            policy, updated every `teacher_sync_steps` with rate `teacher_update_rate` (with a PEFT model, a second
            adapter `rgsd_teacher` averaging the trained one: one more adapter's memory, not a model; not under
            ZeRO-3). `"live"`: the current policy
            weights, without gradients. A separate teacher (`teacher_model_name_or_path`, or `teacher_model=` on the
            trainer) is always frozen and needs the default `"base"`.
        teacher_update_rate (`float`, *optional*, defaults to `0.05`):
            EMA rate for `teacher_model_kind="ema"`: `teacher = (1 - rate) * teacher + rate * policy`. The average is
            kept in fp32 even when the teacher is bf16, so small updates are not rounded away.
        teacher_sync_steps (`int`, *optional*, defaults to `1`):
            Optimizer steps between EMA updates for `teacher_model_kind="ema"`.
        teacher_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            A separate, frozen teacher model (path or Hub id) with the student's tokenizer, e.g. a larger model of the
            same family; as TRL's `GKDConfig`. The trainer's `teacher_model` argument takes precedence. Lets recipes
            and the `trl-rubric rgsd` command use a separate teacher (there `smollm2://` and `toy://` name the packaged
            models, as `model_name_or_path` does).

    > Parameters that control the teacher context

        teacher_context (`str`, *optional*, defaults to `"rubric"`):
            What the teacher is shown, by preset name; one line switches the method. `"rubric"`: the rubric as hidden
            criteria (RGSD). `"reference"`: a reference answer from `reference_column` (OPSD / SDFT).
            `"rubric+reference"`: both in one pass. `"rcsd"`: RCSD (arXiv 2606.19327), rubric+reference with the
            rubric as JSON, forward KL over the teacher's top-20 tokens renormalised, per-entry clip 0.05; it sets
            those loss fields where they hold their defaults. `"skills"`: `num_teacher_contexts` teachers per
            rollout, each shown one skill retrieved (BM25) from `skill_bank`. `"sgsd"`: SGSD as published (arXiv
            2605.28791): 8 skills, combined by its gated loss on the sampled token (`teacher_combine="sgsd_gate"`,
            `distillation_support="sampled_token"`, `loss_type="grpo"`). `"criteria"`: `num_teacher_contexts` teachers
            per rollout, teacher k shown the question and only criterion group k (`criterion_grouping`), combined by
            `teacher_combine`. See `trl_rubric.teacher_context` for custom providers.
        reference_column (`str`, *optional*, defaults to `"reference"`):
            Dataset column holding each prompt's reference answer, for the `reference`, `rubric+reference` and `rcsd`
            contexts. A missing or empty value is an error naming the row, before training.
        teacher_prompt_template (`str`, *optional*, defaults to [`DEFAULT_TEACHER_PROMPT_TEMPLATE`]):
            Text with `{prompt}` and `{rubric}` placeholders that builds the teacher's view. For chat prompts it fills
            the last user turn; system turns are kept. The reference contexts have their own default template; a
            template set here replaces it and must hold `{reference}` too.
        rubric_render_style (`str`, *optional*, defaults to `"numbered"`):
            How the rubric is rendered for the teacher: `"numbered"`, `"weighted"` or `"json"`.
        teacher_penalties (`str`, *optional*, defaults to `"omit"`):
            Whether the teacher sees the rubric's penalty criteria (negative weight). `"omit"` leaves them out of the
            teacher's context (grading and rewards still use the whole rubric); `"show"` lists them under "A good
            answer avoids:", as the paper's teacher sees the whole rubric. Decided on SmolLM2-135M-Instruct: shown the
            penalties, the teacher wrote the forbidden phrase in 17% of its answers and its gap halved (+13pp vs
            +28pp), and the student trained from it gained +5.7pp vs +14.7pp. A large model may heed "avoids" where a
            small one is primed by it: `"show"` is one line away. The `rcsd` preset sets `"show"` (its paper shows
            the whole rubric). `trl-rubric gap` reads the same field: measure the gap with the view you train with.
            `"auto"` measures both views before step 0 on `teacher_view_samples` training prompts (the rule of
            `trl_rubric.evaluation.views`: highest conditioning gap unless its answers are more degenerate than the
            other's by over 5 points) and trains with the winner; it needs a judge (`teacher_view_judge=` or a
            `RubricReward` among `reward_funcs`), logs the numbers and writes `teacher_view_choice.json`.
        teacher_view_samples (`int`, *optional*, defaults to `16`):
            Training prompts `teacher_penalties="auto"` compares the views on (each is answered three times: once
            by the student, once per view). More prompts give a surer choice at the cost of start-up time.
        teacher_focus (`str`, *optional*, defaults to `"all"`):
            Which criteria the teacher is shown. `"all"`: the whole rubric (the paper). `"unlearned"`: only those the
            student does not meet yet, by the verdicts of a `RubricReward` among `reward_funcs` on its rollouts
            (`trl_rubric.teacher_focus`; with `distillation_weight=1.0` the judge only observes). A batch's verdicts
            count from the next generation batch on. Penalties follow `teacher_penalties`; at least one goal always
            stays. For `teacher_context="rubric"` and `"rubric+reference"`. Logs `rgsd/teacher_focus_omitted` and
            `rgsd/teacher_focus_rows`. Try it when the teacher's rubric is long and the student meets part of it.
        teacher_focus_threshold (`float`, *optional*, defaults to `0.8`):
            With `teacher_focus="unlearned"`: the pass rate (over a prompt's last `teacher_focus_window` graded
            rollouts) from which a criterion counts as learned and leaves the teacher's view.
        teacher_focus_min_observations (`int`, *optional*, defaults to `2`):
            With `teacher_focus="unlearned"`: graded rollouts of a prompt a criterion needs before it can count as
            learned. Raise it for a noisy judge.
        teacher_focus_window (`int`, *optional*, defaults to `8`):
            With `teacher_focus="unlearned"`: verdicts kept per prompt and criterion; a criterion the student forgets
            comes back into view within this many rollouts.
        rubric_column (`str`, *optional*, defaults to `"rubric"`):
            Dataset column holding each prompt's rubric, in any format `Rubric.from_any` reads.
        pitfall_polarity (`str`, *optional*, defaults to `"as_is"`):
            How RaR "Pitfall" criteria are signed when rubrics are parsed (`as_is`, `negative`, `positive`); it shows
            in the `weighted` and `json` render styles.
        skill_bank (`str` or `None`, *optional*, defaults to `None`):
            File of skills for the `skills` and `sgsd` contexts: `.jsonl` rows with `text` (or `skill` and `mistake`,
            with optional `instead` and `why`, rendered "Don't / Instead / Why this matters" as in SGSD), or one skill
            per line.
        num_teacher_contexts (`int`, *optional*, defaults to `4`):
            K, teachers per rollout: the skills retrieved (`skills`, `sgsd`) or the criterion groups (`criteria`; a
            row with more groups has neighbours merged, one with fewer gets weight-0 views). The teacher forward then
            costs about K times more.
        criterion_grouping (`str`, *optional*, defaults to `"criterion"`):
            For `teacher_context="criteria"`: what one teacher is shown. `"criterion"`: one criterion;
            `"category"`: one criterion category (RaR essential / important / optional / pitfall, a HealthBench or
            ResearchRubrics axis); `"polarity"`: what a good answer contains, or what it avoids (needs
            `teacher_penalties="show"`). Penalty criteria follow `teacher_penalties` as in the whole-rubric view.
        criterion_view_weights (`str`, *optional*, defaults to `"equal"`):
            For `teacher_context="criteria"`: how the K teachers weigh in the combination. `"equal"`, or `"weight"`:
            by the sum of the group's absolute criterion weights, so a 10-point criterion's teacher counts 10 times a
            1-point one's.
        skill_weight_temperature (`float`, *optional*, defaults to `1.0`):
            The K teachers are weighted by a softmax of their retrieval scores at this temperature.
        teacher_combine (`str`, *optional*, defaults to `"mean"`):
            How the K teachers of a provider with several contexts per rollout combine: `"mean"`, the average of their
            per-token divergences weighted by the contexts' weights; `"sgsd_gate"`, the SGSD gate (arXiv 2605.28791,
            see `trl_rubric.multi_teacher`), which needs `reward_funcs` (the verifier) and
            `distillation_support="sampled_token"`; its loss is bounded by log 2 itself, so `token_clip` does not
            apply to it. It gates a single teacher too.
        gate_success_threshold (`float`, *optional*, defaults to `0.5`):
            For `"sgsd_gate"`: a rollout whose weighted reward reaches this is a success, below it a failure.
        gate_tau (`float`, *optional*, defaults to `1.0`):
            For `"sgsd_gate"`: the temperature tau of SGSD's per-token loss `log 2 - softplus(-delta^2 / (2 tau))`,
            delta the teacher's minus the student's log-prob of the sampled token. Smaller tau saturates sooner (the
            loss nears log 2 at smaller |delta|). 1.0 is the published value.
        gate_polarity_clip (`float`, *optional*, defaults to `3.0`):
            For `"sgsd_gate"`: each token's delta is clipped to this size before the rollout's mean that signs a
            teacher's polarity, so a few extreme tokens cannot flip it. 3.0 is the published value.
        gate_confidence_threshold (`float`, *optional*, defaults to `0.05`):
            For `"sgsd_gate"`: a teacher whose mean clipped delta over the rollout is not larger in size than this is
            unsure and gets polarity 0 (no loss). 0.05 is the published value; raise it if `rgsd/gate_active_frac`
            shows most teachers active on noise.
        max_teacher_prompt_length (`int` or `None`, *optional*, defaults to `None`):
            Longest teacher prompt allowed, in tokens. Longer ones raise an error naming the row, checked on the
            whole training set before training starts. Teacher prompts are never truncated. Contexts written by a
            judge (critique, reason-first) are checked on each batch once written; at start-up reason-first is checked
            without its analysis (a lower bound), so the check makes no judge call.

    > Parameters that control the distillation loss

        distillation_beta (`float`, *optional*, defaults to `0.5`):
            Divergence between student and teacher: `0.0` is the forward KL(teacher‖student), `1.0` the reverse
            KL(student‖teacher), values in between the generalized Jensen-Shannon divergence. 0.5 is the paper's.
        distillation_support (`str`, *optional*, defaults to `"full"`):
            `"full"`: the whole vocabulary, computed from hidden states in token chunks so that no logits tensor is
            ever materialised. `"topk"`: the top-k tokens (plus a tail bucket). `"sampled_token"`: the reverse-KL
            estimator on the sampled token only, the cheapest.
        distillation_top_k (`int`, *optional*, defaults to `20`):
            k for `distillation_support="topk"`.
        distillation_top_k_source (`str`, *optional*, defaults to `"teacher"`):
            Whose top-k tokens form the support: `"teacher"` or `"student"`.
        distillation_top_k_tail (`bool`, *optional*, defaults to `True`):
            Add a bucket holding the probability mass outside the top-k.
        teacher_temperature (`float`, *optional*, defaults to `1.0`):
            The teacher's logits are divided by this on top of `temperature` (its distribution is
            `softmax(z / (temperature * teacher_temperature))`), on every support and in the logged log-ratio. Below 1
            sharpens what the teacher prefers, above 1 flattens it; 1.0 leaves the loss exactly as without it.
        teacher_top_k (`int` or `None`, *optional*, defaults to `None`):
            Keep only the teacher's k most likely tokens, renormalised (probability 0 elsewhere), so its long tail
            gives no signal. Where a log-probability of a token outside is needed (reverse KL, `sampled_token`, the
            logged log-ratio) it reads `teacher_top_k_floor`, never -inf. Unlike `distillation_support="topk"` the
            student's side keeps the whole vocabulary. None: the whole teacher distribution.
        teacher_top_k_floor (`float`, *optional*, defaults to `-10.0`):
            The log-probability of a token outside the teacher's top k (about 4.5e-5); lower it to push the student
            harder away from tokens the teacher left out.
        distillation_chunk_size (`int` or `None`, *optional*, defaults to `None`):
            Tokens per call of the full-vocabulary divergence kernel. `None` picks 128 on CPU, where TRL's torch
            fallback would otherwise allocate 4096-token tiles (128 keeps peak memory flat), and one call on GPUs,
            where the Triton kernel tiles the tokens itself and every extra call costs a full fp32 LM-head gradient.
            Set, it applies on GPUs too (one kernel call per chunk): use it when one call over a long batch runs out
            of memory.
        token_clip (`float` or `None`, *optional*, defaults to `None`):
            Bound on each token's divergence (tau; see `token_clip_mode`); `None`, the default, turns clipping off.
            The paper clips at 0.05 (the OPSD line's value). On SmolLM2-135M-Instruct (LoRA, learning rate 2e-3, 24
            steps) no clip gained more than a 0.05 clamp on train prompts in all three comparisons (+14.7 vs +9.4pp,
            +14.0 vs +9.6pp on a second seed, +5.7 vs +4.0pp with penalties shown; paired difference on the second
            seed +4.4pp [+0.3, +8.5]), and the default JSD is bounded by ln 2 per token anyway. Set a clip with
            `distillation_beta` 0 or 1 (KL is unbounded), as the `rcsd` and `sgsd` presets do. When more than half of
            the loss tokens in a logging window are clipped, a warning says so: raise tau or change the mode.
        token_clip_mode (`str`, *optional*, defaults to `"clamp"`):
            `"clamp"`: a token's divergence above tau counts as tau and gives no gradient, so the tokens the rubric
            changes most can drop out (with a confident teacher, all of them). `"scale"`: their value is tau and their
            gradient is scaled by tau / divergence, so the direction is kept. `"per_entry"`: the OPSD code's clip
            (used by RCSD), on each vocabulary entry's contribution before the sum over the vocabulary, so a token's
            loss can be negative; `full` and `topk` supports only. With `sampled_token` the clip is symmetric,
            `[-tau, tau]`, because that estimate is signed. With a clip set, `"clamp"` (the mode default) closed the most
            gap in the 12-step clip ablation on SmolLM2-135M-Instruct (42% vs scale 32%, per-entry 15%; one small run,
            overlapping intervals); see `docs/benchmarks.md`.
        mask_thinking (`bool`, *optional*, defaults to `False`):
            Leave tokens between `thinking_start` and `thinking_end` (inclusive) out of the loss. Use it for thinking
            models: the teacher's reasoning mentions the criteria.
        thinking_start (`str`, *optional*, defaults to `"<think>"`):
            Text that opens a thinking block.
        thinking_end (`str`, *optional*, defaults to `"</think>"`):
            Text that closes a thinking block.
        num_loss_tokens_to_skip (`int`, *optional*, defaults to `0`):
            Leave the first N completion tokens of every sample out of the loss.
        degenerate_rollouts (`str`, *optional*, defaults to `"keep"`):
            What the loss does with a sampled answer the degeneration checks flag (`keep`, `drop`, `unlikelihood`);
            see the field's help.
        degenerate_unlikelihood_weight (`float`, *optional*, defaults to `1.0`):
            With `degenerate_rollouts="unlikelihood"`, the weight of `-log(1 - p_student(token))` on the flagged
            spans' tokens, each counted as one loss token beside the distilled ones.
        rollout_degeneration_guard (`int` or `None`, *optional*, defaults to `None`):
            Sample the student's rollouts through `trl_rubric.evaluation.DegenerationGuard` with this n-gram size (no
            repeated word n-gram, no empty or doubled list markers, no line ending on a repeat), so the loss never
            reads a looped answer. `None` = off. Needs transformers generation (no vLLM, no continuous batching).
        teacher_guard (`bool`, *optional*, defaults to `False`):
            Penalise, in the teacher's logits at every completion position, the tokens `rollout_degeneration_guard`
            bans there, so the student learns not to prefer them.
        teacher_rollouts (`float`, *optional*, defaults to `0.0`):
            Share of each generation batch whose answers the teacher samples (shown its context) instead of the
            student; the student then learns those answers under its own prompt. 0 = the paper's on-policy RGSD.
        teacher_rollout_loss (`str`, *optional*, defaults to `"nll"`):
            The loss on a teacher-sampled answer: `"nll"` (the student's negative log-likelihood of its tokens) or
            `"divergence"` (the distillation divergence, as on the student's own answers).
        teacher_rollout_filter (`bool`, *optional*, defaults to `True`):
            Leave teacher-sampled answers that the degeneration checks flag out of the loss.
        anchor_weight (`float`, *optional*, defaults to `0.0`):
            Weight of the divergence between the student and the initial policy (both shown the student's prompt),
            added on the anchored tokens; 0 = off. Needs `teacher_model_kind="base"` and no separate teacher model.
        anchor_tokens (`str`, *optional*, defaults to `"content"`):
            Which distilled tokens carry the anchor: `"content"` (the student wrote a word there) or `"all"`.
        span_criteria (`list[str]` or `None`, *optional*, defaults to `None`):
            Titles, texts, categories or tags of criteria (e.g. `["key term"]`) whose met spans get more pull: the
            tokens of a rollout where one is met (what its `rule:regex:` / `rule:contains:` tag matches; every row
            needs one, checked before training) and where the teacher gives the sampled token a higher log-prob than
            the student (`trl_rubric/trainers/rgsd_spans.py`). No judge call; one teacher context, no SGSD gate.
        span_weight (`float`, *optional*, defaults to `1.0`):
            With `span_criteria`: the factor on those tokens' distillation loss (it speeds the way to the teacher).
        span_nll_weight (`float`, *optional*, defaults to `0.0`):
            With `span_criteria`: weight of the student's NLL of those tokens, added (it can go past the teacher).
        span_onset_weight (`float`, *optional*, defaults to `0.0`):
            With `span_criteria`: at every distilled token, this times the KL between the teacher's and the student's
            probability of starting one of those criteria's terms next (their rule tags' first words' first tokens).
        distillation_weight (`float`, *optional*, defaults to `1.0`):
            Hybrid mode. With reward functions and `num_generations >= 2`, the loss is
            `(1 - w) * GRPO loss + w * distillation loss`. The default 1.0 is pure RGSD; rewards are then only logged,
            and the GRPO-only work is skipped: the old log-prob forward, vLLM's importance-sampling correction, and
            the reference model of GRPO's `beta` (which pure RGSD refuses; the divergence's beta is
            `distillation_beta`). 0.0 is GRPO alone (a reward phase before RGSD): no teacher or distillation pass.
        degenerate_reward (`float` or `None`, *optional*, defaults to `None`):
            Hybrid mode: the reward of a rollout the degeneration checks flag (a repeated line, pasted criterion text,
            talk about the requirements), given without calling the judge. `None` grades it like any other; `0.0`
            pays nothing for a looping list a rule judge would pay for. Like `judge_share`, it is set on every
            `RubricReward` in `reward_funcs` built with the default (one built with another value is an error) and on
            the reward `trl-rubric rgsd` builds from the judge fields.
        judge_share (`float`, *optional*, defaults to `1.0`):
            Hybrid mode: the share of each step's prompts whose rollouts the judge grades (`trl_rubric.judge_share`:
            drawn per prompt from the seed and step, so resume is exact). The rest get no reward and train on the
            distillation term alone; use it when the judge is what costs. `judge/judged_frac` logs the share judged.
        reward_criteria (`list[str]` or `None`, *optional*, defaults to `None`):
            Hybrid mode: the titles, texts, categories or tags of the only criteria the judge grades and the reward
            scores (`RubricReward(criteria=...)`), e.g. `["key term"]`: a cheap reward on the content the teacher's
            token signal does not carry, while the distillation term teaches the rest. Every row must have one of
            them (checked before training). Like `judge_share`, it reaches every default-built `RubricReward` in
            `reward_funcs` and the reward `trl-rubric rgsd` builds; needs `distillation_weight` below 1.
    """

    num_generations: int | None = field(
        default=1, metadata={"help": "Completions per prompt: 1, or 2+ in hybrid mode."}
    )
    teacher_model_kind: Literal["base", "ema", "live"] = field(default="base", metadata={"help": "Teacher weights."})
    teacher_update_rate: float = field(default=0.05, metadata={"help": "EMA rate for teacher_model_kind='ema'."})
    teacher_sync_steps: int = field(default=1, metadata={"help": "Optimizer steps between EMA teacher updates."})
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Separate frozen teacher (path or Hub id) sharing the student's tokenizer; default: none."},
    )
    teacher_context: str = field(
        default="rubric",
        metadata={
            "help": "Teacher context preset: rubric, reference, rubric+reference, rcsd, skills, sgsd or criteria."
        },
    )
    reference_column: str = field(default="reference", metadata={"help": "Dataset column of the reference answer."})
    skill_bank: str | None = field(default=None, metadata={"help": "Skill file for the skills / sgsd contexts."})
    num_teacher_contexts: int = field(
        default=4, metadata={"help": "Teachers per rollout: skills retrieved, or criterion groups (criteria)."}
    )
    criterion_grouping: Literal["criterion", "category", "polarity"] = field(
        default="criterion",
        metadata={"help": "teacher_context='criteria': one teacher per criterion, category or polarity."},
    )
    criterion_view_weights: Literal["equal", "weight"] = field(
        default="equal",
        metadata={"help": "teacher_context='criteria': teachers weighted equally or by their criteria's weights."},
    )
    skill_weight_temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature on the skills' retrieval scores."}
    )
    teacher_combine: Literal["mean", "sgsd_gate"] = field(
        default="mean", metadata={"help": "How K teachers per rollout combine: mean or sgsd_gate."}
    )
    gate_success_threshold: float = field(
        default=0.5, metadata={"help": "sgsd_gate: weighted reward at or above this is a success."}
    )
    gate_tau: float = field(default=1.0, metadata={"help": "sgsd_gate: temperature tau of the per-token loss."})
    gate_polarity_clip: float = field(
        default=3.0, metadata={"help": "sgsd_gate: per-token clip of the log-ratio before the polarity's mean."}
    )
    gate_confidence_threshold: float = field(
        default=0.05, metadata={"help": "sgsd_gate: a mean log-ratio this small in size gives polarity 0."}
    )
    teacher_prompt_template: str = field(
        default=DEFAULT_TEACHER_PROMPT_TEMPLATE,
        metadata={"help": "Teacher context with {prompt} and {rubric} placeholders."},
    )
    rubric_render_style: Literal["numbered", "weighted", "json"] = field(
        default="numbered", metadata={"help": "Rubric rendering for the teacher: numbered, weighted or json."}
    )
    teacher_penalties: Literal["show", "omit", "auto"] = field(
        default=DEFAULT_TEACHER_PENALTIES,
        metadata={"help": "Whether the teacher sees penalty criteria: show, omit, or auto (measured before step 0)."},
    )
    teacher_view_samples: int = field(
        default=16, metadata={"help": "Training prompts teacher_penalties='auto' compares the views on."}
    )
    teacher_focus: Literal["all", "unlearned"] = field(
        default="all",
        metadata={"help": "Criteria the teacher is shown: all, or unlearned (those a judge reward sees unmet)."},
    )
    teacher_focus_threshold: float = field(
        default=0.8, metadata={"help": "teacher_focus='unlearned': pass rate from which a criterion is learned."}
    )
    teacher_focus_min_observations: int = field(
        default=2,
        metadata={"help": "teacher_focus='unlearned': graded rollouts needed before a criterion is learned."},
    )
    teacher_focus_window: int = field(
        default=8, metadata={"help": "teacher_focus='unlearned': verdicts kept per prompt and criterion."}
    )
    rubric_column: str = field(default="rubric", metadata={"help": "Dataset column holding the rubric."})
    pitfall_polarity: Literal["as_is", "negative", "positive"] = field(
        default="as_is", metadata={"help": "Sign of RaR pitfall criteria: as_is, negative or positive."}
    )
    max_teacher_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Longest teacher prompt in tokens; longer rows raise an error. Never truncated."},
    )
    distillation_beta: float = field(
        default=0.5,
        metadata={"help": "0 = forward KL(teacher||student), 1 = reverse KL(student||teacher), between = JSD."},
    )
    distillation_support: Literal["full", "topk", "sampled_token"] = field(
        default="full", metadata={"help": "Divergence support: full, topk or sampled_token."}
    )
    distillation_top_k: int = field(default=20, metadata={"help": "k for distillation_support='topk'."})
    distillation_top_k_source: Literal["teacher", "student"] = field(
        default="teacher", metadata={"help": "Whose top-k forms the support: teacher or student."}
    )
    distillation_top_k_tail: bool = field(
        default=True, metadata={"help": "Add a bucket for the mass outside the top-k."}
    )
    distillation_chunk_size: int | None = field(
        default=None,
        metadata={"help": "Tokens per divergence-kernel call; None = 128 on CPU, one call on GPU."},
    )
    token_clip: float | None = field(
        default=DEFAULT_TOKEN_CLIP, metadata={"help": "Bound tau on each token's divergence; None disables."}
    )
    token_clip_mode: Literal["clamp", "scale", "per_entry"] = field(
        default=DEFAULT_TOKEN_CLIP_MODE,
        metadata={
            "help": "clamp (no gradient above tau), scale (gradient scaled by tau/div) or per_entry (each "
            "vocabulary entry clipped before the sum; full and topk only)."
        },
    )
    mask_thinking: bool = field(
        default=False, metadata={"help": "Exclude tokens inside thinking blocks from the loss."}
    )
    thinking_start: str = field(default="<think>", metadata={"help": "Text opening a thinking block."})
    thinking_end: str = field(default="</think>", metadata={"help": "Text closing a thinking block."})
    num_loss_tokens_to_skip: int = field(
        default=0, metadata={"help": "Exclude the first N completion tokens of each sample from the loss."}
    )
    distillation_weight: float = field(
        default=1.0,
        metadata={"help": "Hybrid mode: loss = (1-w) * GRPO + w * distillation. 1.0 = pure RGSD."},
    )
    degenerate_reward: float | None = field(
        default=None,
        metadata={"help": "Hybrid reward of a rollout flagged degenerate, without calling the judge (None = graded)."},
    )
    judge_share: float = field(
        default=1.0,
        metadata={"help": "Hybrid: share of each step's prompts sent to the judge; the rest only distil. In (0, 1]."},
    )
    reward_criteria: list[str] | None = field(
        default=None,
        metadata={
            "help": "Hybrid: titles, texts, categories or tags of the only criteria the reward grades (None = all)."
        },
    )
    teacher_no_repeat_ngram_size: int | None = field(
        default=None,
        metadata={
            "help": "Penalise, in the teacher's logits before the divergence, every token that would complete an "
            "n-gram (this many tokens, at least two of them words) already in the completion: the teacher stops "
            "preferring repeated list items. None (default) = off. docs/benchmarks.md measures 5 on SmolLM2."
        },
    )
    teacher_copy_ngram_size: int | None = field(
        default=None,
        metadata={
            "help": "Penalise every token that would extend an n-gram (this many tokens, at least two words) that "
            "only the teacher saw (its prompt minus the student's: rubric text, template) into the completion. "
            "None (default) = off."
        },
    )
    teacher_ban_empty_items: bool = field(
        default=False,
        metadata={
            "help": "Penalise (by teacher_ngram_penalty; or, with teacher_ngram_mode='mask', leave out of the loss) "
            "every token that would end a line holding only list markers ('2.' alone on its line): the teacher stops "
            "preferring empty list items, which the n-gram penalties miss (markers are not words). Off by default; "
            "docs/benchmarks.md measures it on both SmolLM2 worlds."
        },
    )
    teacher_ban_doubled_markers: bool = field(
        default=False,
        metadata={
            "help": "Likewise for every number or bullet token ('*' excepted) that would add a second marker after a "
            "spaced one ('1. 1. Plan', '2. - Rest'). Off by default: with teacher_ban_empty_items and the n-gram "
            "penalties it lowered the gain on the health world (docs/benchmarks.md)."
        },
    )
    teacher_ngram_penalty: float = field(
        default=10.0,
        metadata={"help": "Logit penalty on those tokens (finite; 10 is close to a ban). Lower it for a nudge."},
    )
    teacher_ngram_mode: Literal["logit", "mask"] = field(
        default="logit",
        metadata={
            "help": "'logit': lower the teacher's logits as above (every support); 'mask': instead leave the "
            "completion tokens that themselves complete such an n-gram out of the loss."
        },
    )
    degenerate_rollouts: Literal["keep", "drop", "unlikelihood"] = field(
        default="keep",
        metadata={
            "help": "What the distillation loss does with a sampled answer that the degeneration checks flag (a "
            "repeated line, pasted criterion text, talk about the requirements; `trl_rubric.evaluation.degeneration`, "
            "the checks `eval` and `gap` report). 'keep' (default): distil it like any other. 'drop': leave the whole "
            "answer out of the distillation loss (counted as `rgsd/degenerate_dropped`), so the student is never "
            "pulled towards the teacher's preferences inside a degenerate answer. 'unlikelihood': drop it as 'drop' "
            "does, and on the tokens of its flagged spans (a repeated line or item after its first occurrence, empty "
            "list items, the pasted criterion words, the meta-talk sentence) add the unlikelihood term "
            "-log(1 - p_student(token)) (Welleck et al., arXiv 1908.04319), which pushes the student away from what "
            "it wrote there (`rgsd/unlikelihood`, `rgsd/unlikelihood_tokens`). Use it when 'drop' leaves the "
            "student's own degenerate answers in place. A hybrid run's reward term keeps it."
        },
    )
    degenerate_unlikelihood_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the unlikelihood term of degenerate_rollouts='unlikelihood'. Each flagged token counts "
            "as one loss token beside the distilled ones (the same normaliser, loss_type's), so 1.0 weighs a flagged "
            "token's -log(1 - p) like one token's divergence. Raise it when degenerate answers persist."
        },
    )
    teacher_rollouts: float = field(
        default=0.0,
        metadata={
            "help": "Share (0 to 1) of each generation batch whose answers are sampled by the teacher, shown its "
            "context (the rubric), instead of by the student; the student learns them under its own prompt "
            "(context distillation, 'Learning by Distilling Context', arXiv 2209.15189; mixing the student's and the "
            "teacher's samples as GKD does, 'On-Policy Distillation of Language Models', arXiv 2306.13649). Rows are "
            "chosen evenly spaced within each batch, so a run resumes exactly. 0 (default) is the paper's on-policy "
            "RGSD. Logged: rgsd/teacher_rollout_frac, rgsd/teacher_rollout/degenerate (and /repeats_line, "
            "/copies_rubric, /meta_talk: the teacher's answers, before the filter), rgsd/teacher_rollout_nll. Needs "
            "transformers generation (no vLLM, no continuous batching), no tools or rollout_func, one teacher context "
            "per rollout that does not read the rollout, pure RGSD (distillation_weight=1.0), and not DeepSpeed "
            "ZeRO-3. On SmolLM2-135M it traded gain for fewer degenerate answers (docs/benchmarks.md); off by default."
        },
    )
    rollout_degeneration_guard: int | None = field(
        default=None,
        metadata={
            "help": "Sample the rollouts through trl_rubric.evaluation.DegenerationGuard with this n-gram size: no "
            "word n-gram of this many tokens twice within the answer (case ignored), no line of bare list markers, "
            "no second marker after a spaced one, and no line or answer that ends on a repeat of an earlier line. "
            "The loss then never reads a looped answer, so the student does not practise the loops it would "
            "otherwise write (trainers/rollout_guard.py; the teacher sampling teacher_rollouts is guarded too). "
            "None (default) = plain sampling. Transformers generation only (no use_vllm, no continuous batching). "
            "Logged: rgsd/rollout_guard_mass (probability the bans removed, summed over a rollout's tokens). docs/benchmarks.md measures 3 on SmolLM2."
        },
    )
    teacher_guard: bool = field(
        default=False,
        metadata={
            "help": "Apply the rollout guard's bans to the teacher too: at every completion position, every token "
            "rollout_degeneration_guard forbids there gets teacher_ngram_penalty off the teacher's logit "
            "(teacher_ngram_mode='logit' only), so the student learns a distribution that does "
            "not prefer what the guard forbids. Needs rollout_degeneration_guard. Off by default; on SmolLM2 it "
            "lowered, not removed, the loops of plain sampling (docs/benchmarks.md): decode with the guard too."
        },
    )
    teacher_rollout_loss: Literal["nll", "divergence"] = field(
        default="nll",
        metadata={
            "help": "The loss on a teacher-sampled answer. 'nll' (default): the student's negative log-likelihood "
            "of the answer's tokens at the sampling temperature, so with teacher_rollout_filter the student learns "
            "the teacher's answers that passed the checks (a sequence-level target). 'divergence': the distillation "
            "divergence, as on the student's own answers (the teacher's whole next-token distribution at each "
            "position of its own answer)."
        },
    )
    teacher_rollout_filter: bool = field(
        default=True,
        metadata={
            "help": "Leave the teacher-sampled answers that the degeneration checks flag (a repeated line, pasted "
            "criterion text, talk about the requirements) out of the loss, counted as "
            "rgsd/teacher_rollout_dropped. The student's own answers follow degenerate_rollouts."
        },
    )
    anchor_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of an anchor to the initial policy: on each anchored token, the divergence (generalised "
            "JSD at distillation_beta, whole vocabulary) between the student and the policy it started from, both "
            "shown the student's own prompt, added to the distillation loss. It holds the student near what it wrote "
            "before it read rubrics (no talk of requirements, no repeated items) while the teacher moves it. 0 "
            "(default) = off. Needs the frozen initial policy: teacher_model_kind='base' and no separate "
            "teacher_model. Costs one more no-gradient forward of the frozen model a step (trl_rubric/trainers/"
            "rgsd_anchor.py)."
        },
    )
    anchor_tokens: Literal["content", "all"] = field(
        default="content",
        metadata={
            "help": "Which distilled tokens carry the anchor: 'content' (default) those where the student wrote a "
            "word (a token with a letter), so list markers, line breaks and punctuation follow the teacher alone; "
            "'all' every distilled token."
        },
    )
    span_criteria: list[str] | None = field(
        default=None,
        metadata={"help": "Criteria whose rule-tag spans the teacher prefers get more pull (None = off)."},
    )
    span_weight: float = field(default=1.0, metadata={"help": "Factor on the span tokens' distillation loss."})
    span_nll_weight: float = field(default=0.0, metadata={"help": "Weight of the NLL added on the span tokens."})
    span_onset_weight: float = field(default=0.0, metadata={"help": "Weight of the term-onset Bernoulli KL."})

    teacher_temperature: float = field(
        default=1.0, metadata={"help": "Teacher logits divided by this (on top of temperature); 1.0 = unchanged."}
    )
    teacher_top_k: int | None = field(
        default=None,
        metadata={"help": "Teacher renormalised over its top k tokens (0 elsewhere); None = whole distribution."},
    )
    teacher_top_k_floor: float = field(
        default=DEFAULT_TEACHER_TOP_K_FLOOR,
        metadata={"help": "Log-prob a token outside the teacher's top k reads (reverse KL, sampled_token)."},
    )

    def __post_init__(self):
        apply_preset(self, {f.name: f.default for f in fields(RGSDConfig) if f.name in RGSD_PRESET_FIELDS})
        self._check_rgsd_fields()
        if self.num_generations != 1:
            super().__post_init__()
            return
        # GRPOConfig rejects num_generations < 2 because group advantages need a group. RGSD has no advantages, so
        # one rollout is the method itself. TRL raises at the very end of its checks, so finishing the remaining
        # checks here keeps every other validation intact (`tests/test_trl_contract.py` pins this).
        try:
            super().__post_init__()
        except ValueError as e:
            if "at least 2 generations" not in str(e):
                raise
            self._finish_grpo_post_init()

    def _finish_grpo_post_init(self) -> None:
        # The checks GRPOConfig.__post_init__ runs after its num_generations check (TRL 1.16).
        if self.vllm_importance_sampling_cap is not None:
            self.vllm_importance_sampling_clip_max = self.vllm_importance_sampling_cap
        lo, hi = self.vllm_importance_sampling_clip_min, self.vllm_importance_sampling_clip_max
        if lo is not None and hi is not None and lo >= hi:
            raise ValueError(
                f"vllm_importance_sampling_clip_min ({lo}) must be less than vllm_importance_sampling_clip_max ({hi})."
            )
        truncate = self.vllm_importance_sampling_mode in ("token_truncate", "sequence_truncate")
        if self.vllm_importance_sampling_correction and truncate and lo is None and hi is None:
            raise ValueError(
                "At least one of `vllm_importance_sampling_clip_min` or `vllm_importance_sampling_clip_max` "
                "must be set when `vllm_importance_sampling_mode` is a `*_truncate` mode."
            )

    def _check_rgsd_fields(self) -> None:
        def choice(name, options):
            value = getattr(self, name)
            if value not in options:
                raise ValueError(f"{name} is {value!r}; expected one of {tuple(options)}")

        choice("teacher_model_kind", TEACHER_MODEL_KINDS)
        choice("distillation_support", DISTILLATION_SUPPORTS)
        choice("distillation_top_k_source", ("teacher", "student"))
        choice("rubric_render_style", RENDER_STYLES)
        choice("teacher_penalties", (*TEACHER_PENALTIES, "auto"))
        if self.teacher_view_samples < 2:
            raise ValueError(f"teacher_view_samples is {self.teacher_view_samples}; expected 2 or more")
        choice("teacher_focus", TEACHER_FOCUS_MODES)
        check_teacher_focus_settings(
            self.teacher_focus_threshold, self.teacher_focus_min_observations, self.teacher_focus_window
        )
        choice("token_clip_mode", TOKEN_CLIP_MODES)
        choice("pitfall_polarity", PITFALL_POLARITIES)
        self.degenerate_reward = check_degenerate_reward(self.degenerate_reward)
        self.judge_share = check_judge_share(self.judge_share)
        if self.reward_criteria is not None:
            self.reward_criteria = list(check_criteria(self.reward_criteria))
            if self.distillation_weight >= 1.0:
                raise ValueError(
                    f"reward_criteria={self.reward_criteria} selects what the hybrid reward grades, but "
                    f"distillation_weight is {self.distillation_weight} (pure RGSD, no reward term): set "
                    "distillation_weight below 1, or drop reward_criteria"
                )
        choice("teacher_combine", TEACHER_COMBINES)
        choice("criterion_grouping", CRITERION_GROUPINGS)
        choice("criterion_view_weights", CRITERION_VIEW_WEIGHTS)
        if self.teacher_combine == "sgsd_gate" and self.distillation_support != "sampled_token":
            raise ValueError(
                f"teacher_combine='sgsd_gate' is a loss on the sampled token's log-probs (SGSD, arXiv 2605.28791), but "
                f"distillation_support is {self.distillation_support!r}: set distillation_support='sampled_token' "
                "(the sgsd preset does)"
            )
        if not (self.gate_tau > 0 and self.gate_polarity_clip > 0 and self.gate_confidence_threshold >= 0):
            raise ValueError(
                f"gate_tau={self.gate_tau}, gate_polarity_clip={self.gate_polarity_clip}, gate_confidence_threshold="
                f"{self.gate_confidence_threshold}; expected tau > 0, clip > 0 and threshold >= 0"
            )
        if not 0.0 <= self.distillation_beta <= 1.0:
            raise ValueError(f"distillation_beta is {self.distillation_beta}; expected a value in [0, 1]")
        if not 0.0 <= self.distillation_weight <= 1.0:
            raise ValueError(f"distillation_weight is {self.distillation_weight}; expected a value in [0, 1]")
        if self.distillation_weight == 1.0 and (self.entropy_coef != 0.0 or self.use_adaptive_entropy):
            # GRPO's entropy bonus regularises its policy-gradient term; pure RGSD has none, and the divergence to
            # the teacher already governs the student's entropy.
            raise ValueError(
                f"entropy_coef={self.entropy_coef} / use_adaptive_entropy={self.use_adaptive_entropy} act on GRPO's "
                "policy loss, which pure RGSD (distillation_weight=1.0) does not have; drop them, or use hybrid mode "
                "(distillation_weight < 1 with reward_funcs), where they scale by 1 - distillation_weight"
            )
        if self.token_clip is not None and self.token_clip <= 0:
            raise ValueError(f"token_clip is {self.token_clip}; expected a positive number or None")
        if self.beta != 0.0 and self.distillation_weight == 1.0:
            raise ValueError(
                f"beta is {self.beta}: that is GRPO's KL penalty to a reference model, which pure RGSD "
                "(distillation_weight=1.0) never uses, though it would build and run a reference model every round. "
                "The divergence's beta is distillation_beta. Set beta=0.0, or use hybrid mode (distillation_weight < 1)."
            )
        if self.loss_type in losses.POLICY_ONLY_LOSS_TYPES:
            raise ValueError(
                f"loss_type is {self.loss_type!r}, which reshapes GRPO's importance-ratio objective and has no "
                f"distillation analogue; use one of {losses.LOSS_TYPES}"
            )
        if self.loss_type not in losses.LOSS_TYPES:
            # Checked here, not at the first loss: the reduction runs only after generation and the teacher pass.
            raise ValueError(
                f"loss_type is {self.loss_type!r}, which RGSDTrainer does not know; expected one of "
                f"{losses.LOSS_TYPES} (the token normalisations the distillation loss shares with GRPO)"
            )
        if self.token_clip_mode == "per_entry" and self.distillation_support == "sampled_token":
            raise ValueError(
                "token_clip_mode='per_entry' clips each vocabulary entry's contribution, but "
                "distillation_support='sampled_token' has one entry per token; use token_clip_mode 'clamp' or "
                "'scale' (symmetric for that estimate), or distillation_support 'full' or 'topk'."
            )
        if not 0.0 < self.teacher_update_rate <= 1.0:
            raise ValueError(f"teacher_update_rate is {self.teacher_update_rate}; expected a value in (0, 1]")
        if self.teacher_sync_steps < 1:
            raise ValueError(f"teacher_sync_steps is {self.teacher_sync_steps}; expected at least 1")
        if self.distillation_chunk_size is not None and self.distillation_chunk_size < 1:
            raise ValueError(f"distillation_chunk_size is {self.distillation_chunk_size}; expected at least 1")
        for name in ("teacher_no_repeat_ngram_size", "teacher_copy_ngram_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 2):
                raise ValueError(f"{name} is {value!r}; expected an n-gram size of at least 2 tokens, or None")
        if not (0 < self.teacher_ngram_penalty < float("inf")):
            raise ValueError(f"teacher_ngram_penalty is {self.teacher_ngram_penalty}; expected a finite number > 0")
        choice("teacher_ngram_mode", ("logit", "mask"))
        check_teacher_shaping(self)
        choice("degenerate_rollouts", ("keep", "drop", "unlikelihood"))
        weight = self.degenerate_unlikelihood_weight
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < float("inf"):
            raise ValueError(f"degenerate_unlikelihood_weight is {weight!r}; expected a finite number >= 0")
        share = self.teacher_rollouts
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
            raise ValueError(f"teacher_rollouts is {share!r}; expected a share of each batch between 0 and 1")
        choice("teacher_rollout_loss", ("nll", "divergence"))
        if share > 0 and self.distillation_weight < 1.0:
            raise ValueError(
                f"teacher_rollouts is {share}, but distillation_weight is {self.distillation_weight} (hybrid): GRPO's "
                "term needs the policy's own samples. Set teacher_rollouts=0, or distillation_weight=1.0."
            )
        if share > 0 and (self.use_vllm or self.use_transformers_continuous_batching):
            raise ValueError(
                f"teacher_rollouts is {share}: teacher-sampled answers are generated with transformers' generate "
                "(the teacher's weights and prompt), which vLLM and continuous batching do not run. Set "
                "use_vllm=False and use_transformers_continuous_batching=False, or teacher_rollouts=0."
            )
        guard = self.rollout_degeneration_guard
        if guard is not None:
            if isinstance(guard, bool) or not isinstance(guard, int) or guard < 0:
                raise ValueError(f"rollout_degeneration_guard is {guard!r}; expected None or an n-gram size >= 0")
            if self.use_vllm or self.use_transformers_continuous_batching:
                raise ValueError(
                    f"rollout_degeneration_guard is {guard}: the guard is a transformers logits processor, which vLLM "
                    "and continuous batching do not run. Set use_vllm=False and "
                    "use_transformers_continuous_batching=False, or rollout_degeneration_guard=None."
                )
        if self.teacher_guard and guard is None:
            raise ValueError(
                "teacher_guard applies the rollout guard's bans to the teacher, but rollout_degeneration_guard is "
                "None. Set rollout_degeneration_guard (e.g. 3), or teacher_guard=False."
            )
        if self.teacher_guard and self.teacher_ngram_mode == "mask":
            raise ValueError(
                "teacher_guard with teacher_ngram_mode='mask' would mask nothing: the rollouts are sampled under the "
                "same guard, so no sampled token is one it bans. Use teacher_ngram_mode='logit'."
            )
        anchor = self.anchor_weight
        if isinstance(anchor, bool) or not isinstance(anchor, int | float) or not 0 <= anchor < float("inf"):
            raise ValueError(f"anchor_weight is {anchor!r}; expected a finite number >= 0")
        choice("anchor_tokens", ("content", "all"))
        spans = (self.span_weight, self.span_nll_weight, self.span_onset_weight, self.span_criteria)
        self.span_criteria = check_span_settings(*spans)
        if anchor > 0 and self.teacher_model_kind != "base":
            raise ValueError(
                f"anchor_weight is {anchor}, which anchors the student to the initial policy, but teacher_model_kind "
                f"is {self.teacher_model_kind!r}: only the frozen 'base' teacher is the initial policy. Use "
                "teacher_model_kind='base', or set anchor_weight=0."
            )
        if teacher_penalties_on(self) and self.teacher_context in ("skills", "sgsd", "criteria"):
            raise ValueError(
                f"teacher n-gram penalties support one teacher context per rollout; teacher_context="
                f"{self.teacher_context!r} has several. Unset teacher_no_repeat_ngram_size, teacher_copy_ngram_size, "
                "teacher_ban_empty_items, teacher_ban_doubled_markers and teacher_guard."
            )
        if self.num_loss_tokens_to_skip < 0:
            raise ValueError(f"num_loss_tokens_to_skip is {self.num_loss_tokens_to_skip}; expected >= 0")
        if "{prompt}" not in self.teacher_prompt_template:
            raise ValueError(f"teacher_prompt_template must contain {{prompt}}; got {self.teacher_prompt_template!r}")
        if self.teacher_context == "rubric" and "{rubric}" not in self.teacher_prompt_template:
            logger.warning(
                "teacher_prompt_template has no {rubric} placeholder: the teacher will not see the rubric, so this "
                "run is plain self-distillation (a useful control, but not RGSD)."
            )


def teacher_penalties_on(config) -> bool:
    """Whether any teacher-side penalty (repeat, copy, empty item, doubled marker, the rollout guard's) is set."""
    return bool(
        config.teacher_no_repeat_ngram_size
        or config.teacher_copy_ngram_size
        or config.teacher_ban_empty_items
        or config.teacher_ban_doubled_markers
        or getattr(config, "teacher_guard", False)
    )


__all__ = ["DEFAULT_TOKEN_CLIP", "DEFAULT_TOKEN_CLIP_MODE", "DISTILLATION_SUPPORTS", "TOKEN_CLIP_MODES", "RGSDConfig"]
