import subprocess
import sys


def test_public_names_import():
    import trl_rubric
    from trl_rubric import (  # noqa: F401
        Criterion,
        OpenAIJudge,
        RGSDConfig,
        RGSDTrainer,
        Rubric,
        RubricGRPOConfig,
        RubricGRPOTrainer,
        RubricReward,
        RuleJudge,
        TransformersJudge,
        load_rubric_dataset,
    )

    assert set(trl_rubric.__all__) >= {"RGSDTrainer", "RubricGRPOTrainer", "Rubric", "load_rubric_dataset"}
    assert issubclass(RGSDTrainer, __import__("trl").GRPOTrainer)
    assert issubclass(RubricGRPOTrainer, __import__("trl").GRPOTrainer)


def test_cli_version_does_not_import_trl():
    code = "import sys, trl_rubric.cli; trl_rubric.cli.main(['--version']); print('trl' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")
