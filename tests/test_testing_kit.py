import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from trl_rubric.testing import make_rubric_rows, rgsd_test_config
from trl_rubric.trainers.rgsd_config import RGSDConfig


def test_tiny_model_reloads_with_chat_template_and_special_tokens(tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    n_params = sum(p.numel() for p in model.parameters())
    assert 10_000 <= n_params <= 1_000_000
    assert model.config.vocab_size == len(tok)
    assert model.generation_config.eos_token_id == tok.eos_token_id


def test_tiny_model_trains_two_steps_with_trl_grpo(tiny_model_path, tmp_path):
    dataset = Dataset.from_list(make_rubric_rows(8))

    def length_reward(completions, **kwargs):
        return [float(len(c)) for c in completions]

    before = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict().items()}
    args = GRPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
        max_steps=2,
        learning_rate=1e-2,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
    )
    trainer = GRPOTrainer(model=tiny_model_path, reward_funcs=length_reward, args=args, train_dataset=dataset)
    trainer.train()
    assert trainer.state.global_step == 2
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before)


def test_rgsd_test_config_keeps_overrides_and_short_cpu_defaults(tmp_path):
    # Overrides that differ from both the kit's values and RGSDConfig's defaults, so keeping them is visible
    assert RGSDConfig.token_clip != 0.2 and rgsd_test_config(tmp_path / "a").max_steps != 5
    args = rgsd_test_config(tmp_path / "out", max_steps=5, token_clip=0.2)
    assert args.output_dir == str(tmp_path / "out") and args.use_cpu and not args.bf16
    assert (args.max_steps, args.token_clip, args.max_completion_length, args.save_strategy) == (5, 0.2, 8, "no")


def test_length_paying_judge_pays_the_blind_spot_for_long_answers_only():
    from trl_rubric.judges import RuleJudge
    from trl_rubric.rubric import Rubric
    from trl_rubric.testing.gameable_judge import LengthPayingJudge, word_count

    rubric = Rubric.from_any(
        [
            {"text": "Uses the word river.", "title": "required word", "weight": 2, "tags": ["rule:contains:river"]},
            {"text": "Uses the word lake.", "title": "other", "weight": 1, "tags": ["rule:contains:lake"]},
        ]
    )
    long_answer = "forest " * 12
    assert word_count(long_answer) == 12
    gamed, exact = LengthPayingJudge(long_words=12), RuleJudge()
    assert gamed.verdicts(long_answer, rubric) == [True, False]  # paid without the word; other criteria exact
    assert exact.verdicts(long_answer, rubric) == [False, False]
    assert gamed.verdicts("forest desert", rubric) == exact.verdicts("forest desert", rubric) == [False, False]
    assert gamed.verdicts("a river", rubric) == [True, False]
