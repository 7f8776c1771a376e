import os

from trl_rubric.testing import set_offline_env

set_offline_env()
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """A random tiny Qwen2 chat model written once per test session."""
    from trl_rubric.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))
