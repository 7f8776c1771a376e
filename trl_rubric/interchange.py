"""Rubric files of autorubric (PyPI `autorubric`, MIT): read them into a [`Rubric`], write a [`Rubric`] as one.

The format, as autorubric's own loader (`Rubric.validate_and_create_criteria` and its `Criterion` model, read in
the public `delip/autorubric` repository; autorubric is not a dependency) accepts it, in JSON or YAML:

- a criterion is `{requirement, weight, name, options, scale_type, aggregation}`: `requirement` (the text) is
  required, `weight` defaults to 10 (negative weights are penalties), `name` is an optional short id;
- a rubric is a list of criteria, or a list of sections `{criteria: [...]}` (flattened in order), or a dict
  `{sections: [...]}`, or any of these under a `rubric` key; a rubric with `guidelines` (a note on applying the whole
  rubric) is written `{guidelines, criteria: [...]}` (or `{guidelines, sections: [...]}`).

Mapping: `requirement` -> `text`, `weight` -> `weight` (10 when absent), `name` -> `title`, a section's `name` (or
`title`) -> the `category` of its criteria, `guidelines` -> [`Rubric.guidelines`]. Multi-choice criteria (`options`)
have no binary equivalent here and are refused with an error naming the criterion.

Writing keeps text, weight, title and category (as sections of consecutive criteria sharing a category, which
autorubric reads and flattens in order) and guidelines; our `tags` have no place in the format and are lost, and
[`write_autorubric`] returns what was lost.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .rubric import Criterion, Rubric, RubricError

#: autorubric's default weight of a criterion that gives none.
AUTORUBRIC_DEFAULT_WEIGHT = 10.0


def _is_file(source: Any) -> bool:
    if isinstance(source, str) and ("\n" in source or source.lstrip()[:1] in ("[", "{")):
        return False  # text, not a path
    try:
        return Path(os.path.expanduser(str(source))).is_file()
    except OSError:  # a name too long for the file system is text too
        return False


def _load(source: Any) -> Any:
    if isinstance(source, (str, os.PathLike)) and _is_file(source):
        path = Path(os.path.expanduser(str(source)))
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            try:
                return yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise RubricError(f"autorubric file {path.name!r} is not valid YAML: {e}") from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise RubricError(f"autorubric file {path.name!r} is not valid JSON ({e.msg}, line {e.lineno})") from None
    if isinstance(source, os.PathLike):
        raise RubricError(f"autorubric file {str(source)!r} does not exist")
    if isinstance(source, str):
        import yaml  # YAML is a superset of JSON: one parser reads both

        try:
            return yaml.safe_load(source)
        except yaml.YAMLError as e:
            raise RubricError(f"autorubric text is neither a file nor valid JSON/YAML: {e}") from None
    return source


def _guidelines(obj: Mapping[str, Any], found: str | None) -> str | None:
    value = obj.get("guidelines")
    if value is None:
        return found
    if not isinstance(value, str):
        raise RubricError(f"autorubric rubric has guidelines {value!r}; expected a string")
    return value.strip() or found


def _criterion(item: Any, index: int, category: str | None) -> Criterion:
    where = f"autorubric criterion {index}"
    if not isinstance(item, Mapping):
        raise RubricError(f"{where} is {item!r}; expected a dict with a 'requirement'")
    name = item.get("name")
    label = f"{where} ({name!r})" if name else where
    if item.get("options") is not None:
        raise RubricError(
            f"{label} is multi-choice (options {[o.get('label') if isinstance(o, Mapping) else o for o in item['options']]}"
            "); trl-rubric grades binary met / unmet criteria only: split it into binary criteria or drop it"
        )
    requirement = item.get("requirement")
    if not isinstance(requirement, str) or not requirement.strip():
        raise RubricError(f"{label} has requirement {requirement!r}; expected a non-empty string")
    weight = item.get("weight", AUTORUBRIC_DEFAULT_WEIGHT)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise RubricError(f"{label} has weight {weight!r}; expected a number")
    if name is not None and not isinstance(name, str):
        raise RubricError(f"{label} has name {name!r}; expected a string")
    return Criterion(text=requirement.strip(), weight=float(weight), category=category, title=name or None)


def read_autorubric(source: Any) -> Rubric:
    """A [`Rubric`] from an autorubric rubric: a `.json` / `.yaml` file path, a JSON or YAML string, or the parsed
    list / dict. Keeps `guidelines` as [`Rubric.guidelines`].

    Raises:
        RubricError: naming the criterion (1-based, with its `name`) and the value, e.g. for multi-choice `options`.
    """
    data = _load(source)
    guidelines = None
    if isinstance(data, Mapping):
        guidelines = _guidelines(data, guidelines)
        if "rubric" in data:
            data = data["rubric"]
            if isinstance(data, Mapping):
                guidelines = _guidelines(data, guidelines)
        if isinstance(data, Mapping):
            if isinstance(data.get("sections"), list):
                data = data["sections"]
            elif isinstance(data.get("criteria"), list):
                data = data["criteria"]
            else:
                raise RubricError(
                    f"autorubric rubric is a dict with keys {sorted(data)}; expected 'criteria', 'sections' or "
                    "'rubric' (or a list of criteria)"
                )
    if not isinstance(data, Sequence) or isinstance(data, str):
        raise RubricError(f"autorubric rubric is {str(data)[:60]!r}; expected a list of criteria or sections")
    criteria: list[Criterion] = []
    for item in data:
        if isinstance(item, Mapping) and "criteria" in item and "requirement" not in item:
            section = item.get("name") or item.get("title")
            if not isinstance(item["criteria"], list):
                raise RubricError(
                    f"autorubric section {section or len(criteria) + 1!r} has criteria that are not a list"
                )
            for sub in item["criteria"]:
                criteria.append(_criterion(sub, len(criteria) + 1, str(section) if section else None))
        else:
            criteria.append(_criterion(item, len(criteria) + 1, None))
    if not criteria:
        raise RubricError("autorubric rubric has no criteria")
    return Rubric(tuple(criteria), guidelines=guidelines)


def to_autorubric(rubric: Any) -> tuple[Any, list[str]]:
    """The autorubric form of `rubric` (anything [`Rubric.from_any`] reads) and a list of what it cannot hold."""
    rubric = Rubric.from_any(rubric)
    lost = [
        f"criterion {i} ({c.title or c.text[:40]!r}): tags {list(c.tags)}" for i, c in enumerate(rubric, 1) if c.tags
    ]

    def one(c: Criterion) -> dict[str, Any]:
        item: dict[str, Any] = {"requirement": c.text, "weight": float(c.weight)}
        if c.title:
            item["name"] = c.title
        return item

    if any(c.category for c in rubric):
        sections: list[dict[str, Any]] = []
        for c in rubric:  # runs of one category, so that autorubric's flattening keeps our order
            if not sections or sections[-1].get("name") != c.category:
                sections.append({"name": c.category, "criteria": []} if c.category else {"criteria": []})
            sections[-1]["criteria"].append(one(c))
        body: Any = {"sections": sections}
        if rubric.guidelines:
            body = {"guidelines": rubric.guidelines, **body}
    else:
        criteria = [one(c) for c in rubric]
        body = {"guidelines": rubric.guidelines, "criteria": criteria} if rubric.guidelines else criteria
    return body, lost


def write_autorubric(rubric: Any, path: str | os.PathLike) -> list[str]:
    """Write `rubric` as an autorubric file (`.yaml` / `.yml` as YAML, anything else as JSON).

    Returns:
        What could not be written (our `tags`, per criterion); empty when nothing was lost.
    """
    body, lost = to_autorubric(rubric)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        path.write_text(yaml.safe_dump(body, sort_keys=False, allow_unicode=True), encoding="utf-8")
    else:
        path.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return lost
