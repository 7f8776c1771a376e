"""trl-rubric: rubric-based post-training for Hugging Face TRL."""

__version__ = "0.1.0.dev0"

from .data import RubricDatasetError, load_rubric_dataset
from .rubric import Criterion, Rubric, RubricError

__all__ = [
    "Criterion",
    "Rubric",
    "RubricDatasetError",
    "RubricError",
    "load_rubric_dataset",
]
