"""Write `docs/api.md` from the public API's signatures, docstrings and config-field metadata.

    .venv/bin/python docs/gen_api.py          # rewrite docs/api.md
    .venv/bin/python docs/gen_api.py --check  # exit 1 if docs/api.md is stale

`tests/test_docs.py` regenerates the page and compares it with the committed file, so the reference cannot rot.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent / "api.md"

# Sections of the reference, in order; every name of `trl_rubric.__all__` belongs to one (others go to "Other").
SECTIONS = [
    ("Rubrics and data", ["Criterion", "Rubric", "RubricError", "load_rubric_dataset", "RubricDatasetError"]),
    ("Trainers", ["RGSDTrainer", "RubricGRPOTrainer", "RGSDConfig", "RubricGRPOConfig"]),
    ("Teacher context", ["DEFAULT_TEACHER_PROMPT_TEMPLATE", "build_teacher_prompt"]),
    (
        "Judges and rewards",
        [
            "RubricJudge",
            "Grade",
            "OpenAIJudge",
            "TransformersJudge",
            "RuleJudge",
            "PanelJudge",
            "JudgeArguments",
            "build_judge",
            "RubricReward",
        ],
    ),
    (
        "Evaluation",
        [
            "evaluate",
            "conditioning_gap",
            "token_logratio_view",
            "summarize",
            "generate_responses",
            "load_model_and_tokenizer",
            "merge_adapter",
            "EvalResult",
            "EvalMetrics",
            "GapResult",
            "TokenView",
            "EvaluationError",
        ],
    ),
]

# Defaults whose repr would be a wall of text, shown by name instead.
_NAMED_DEFAULTS = {"DEFAULT_TEACHER_PROMPT_TEMPLATE": "trl_rubric.teacher"}


def _clean(text: str) -> str:
    """Docstring markup to plain Markdown: [`~trl.X`] and [`X`] cross-references become code spans."""
    return re.sub(r"\[`~?([^`\]]+)`\]", r"`\1`", text)


def _summary(obj) -> str:
    """The first paragraph of an object's docstring, on one line."""
    doc = inspect.getdoc(obj) or ""
    first = doc.strip().split("\n\n")[0]
    return _clean(" ".join(line.strip() for line in first.splitlines()))


def _default_repr(value) -> str:
    import importlib

    for name, module in _NAMED_DEFAULTS.items():
        if isinstance(value, str) and value == getattr(importlib.import_module(module), name):
            return name
    return repr(value)


def _annotation(annotation) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def _signature(name: str, obj, skip_self: bool = True, returns: bool = True, wrap: bool = True) -> str:
    """`name(param: type = default, ...)`, one parameter per line when the one-line form is long."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return f"{name}(...)"
    params = []
    star_done = False
    for p in sig.parameters.values():
        if skip_self and p.name in ("self", "cls"):
            continue
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        if p.kind == p.KEYWORD_ONLY and not star_done:
            params.append("*")
        if p.kind in (p.KEYWORD_ONLY, p.VAR_POSITIONAL):
            star_done = True
        text = prefix + p.name
        annotation = _annotation(p.annotation)
        if annotation:
            text += f": {annotation}"
        if p.default is not inspect.Parameter.empty:
            text += f" = {_default_repr(p.default)}" if annotation else f"={_default_repr(p.default)}"
        params.append(text)
    annotation = _annotation(sig.return_annotation) if returns else ""
    tail = f" -> {annotation}" if annotation else ""
    one_line = f"{name}({', '.join(params)}){tail}"
    if len(one_line) <= 100 or not wrap:
        return one_line
    body = "".join(f"    {p},\n" for p in params)
    return f"{name}(\n{body}){tail}"


def _public_methods(cls) -> list[tuple[str, object]]:
    """Public methods and properties the class defines itself: neither inherited nor overriding a base's."""
    out = []
    for attr, value in cls.__dict__.items():
        if attr.startswith("_") or any(attr in base.__dict__ for base in cls.__mro__[1:]):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            out.append((attr, value.__func__))
        elif isinstance(value, property) or inspect.isfunction(value):
            out.append((attr, value))
    return out


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _field_default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return _default_repr(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return repr(f.default_factory())
    return "required"


def _declared_type(owner, name: str):
    # The annotation as written: `HfArgumentParser` replaces `Field.type` with a resolved (and simplified) type once a
    # parser is built for the class, which would make this page depend on what ran before in the same process.
    for klass in owner.__mro__:
        annotations = klass.__dict__.get("__annotations__", {})
        if name in annotations:
            return annotations[name]
    return None


def field_table(fields: list[dataclasses.Field], owner=None) -> list[str]:
    """A Markdown table of dataclass fields: name, type, default and the `help` metadata."""
    lines = ["| field | type | default | help |", "|---|---|---|---|"]
    for f in fields:
        declared = _declared_type(owner, f.name) if owner is not None else None
        kind = _annotation(declared if declared is not None else f.type)
        lines.append(
            f"| `{f.name}` | `{_cell(kind)}` | `{_cell(_field_default(f))}` | {_cell(f.metadata.get('help', ''))} |"
        )
    return lines


def own_fields(cls, *bases) -> list[dataclasses.Field]:
    """Fields `cls` adds to `bases`, or whose default it changes."""
    inherited = {}
    for base in bases:
        inherited.update({f.name: f for f in dataclasses.fields(base)})
    out = []
    for f in dataclasses.fields(cls):
        base = inherited.get(f.name)
        if base is None or base.default != f.default or base.default_factory != f.default_factory:
            out.append(f)
    return out


def _object_section(name: str, obj) -> list[str]:
    lines = [f"### `{name}`", ""]
    if isinstance(obj, str):  # a constant
        lines += [f"`trl_rubric.{name}`: a string constant.", "", "```text", obj, "```", ""]
        return lines
    module = obj.__module__
    lines += [f"`{module}.{obj.__qualname__}`", ""]
    is_config = dataclasses.is_dataclass(obj) and name.endswith(("Config", "Arguments"))
    is_exception = inspect.isclass(obj) and issubclass(obj, BaseException)
    if not is_config and not is_exception:
        lines += ["```python no-test: signature", _signature(name, obj, returns=not inspect.isclass(obj)), "```", ""]
    lines += [_summary(obj), ""]
    if inspect.isclass(obj) and not is_config and not is_exception:
        methods = _public_methods(obj)
        if methods:
            lines += ["Methods:", ""]
            for attr, member in methods:
                if isinstance(member, property):
                    entry, summary = f"`{attr}` (property)", _summary(member.fget)
                else:
                    entry, summary = f"`{_signature(attr, member, wrap=False)}`", _summary(member)
                lines.append(f"- {entry}: {summary}" if summary else f"- {entry}")
            lines.append("")
    return lines


def _config_fields_section() -> list[str]:
    from trl import GRPOConfig

    from trl_rubric import JudgeArguments, RGSDConfig, RubricGRPOConfig
    from trl_rubric.scripts._common import RubricDataArguments
    from trl_rubric.scripts.eval import EvalArguments
    from trl_rubric.scripts.gap import GapArguments
    from trl_rubric.scripts.grpo import ExtraRewardArguments
    from trl_rubric.scripts.rgsd import RGSDJudgeArguments

    lines = [
        "## Config fields",
        "",
        "Both configs accept every [`trl.GRPOConfig`](https://huggingface.co/docs/trl/grpo_trainer) field as well; "
        "the tables list only the fields trl-rubric adds or whose default it changes. The same names work as "
        "recipe keys and as `--flags` of the `trl-rubric` commands.",
        "",
        "### `RGSDConfig` fields",
        "",
        *field_table(own_fields(RGSDConfig, GRPOConfig), RGSDConfig),
        "",
        "### `RubricGRPOConfig` fields",
        "",
        "Every `JudgeArguments` field (below), plus:",
        "",
        *field_table(own_fields(RubricGRPOConfig, GRPOConfig, JudgeArguments), RubricGRPOConfig),
        "",
        "### `JudgeArguments` fields",
        "",
        "Shared by `RubricGRPOConfig`, `trl-rubric eval` and `trl-rubric gap`.",
        "",
        *field_table(dataclasses.fields(JudgeArguments), JudgeArguments),
        "",
        "### Command-line data options (`trl-rubric rgsd`, `trl-rubric grpo`)",
        "",
        *field_table(dataclasses.fields(RubricDataArguments), RubricDataArguments),
        "",
        "`trl-rubric grpo` also takes:",
        "",
        *field_table(dataclasses.fields(ExtraRewardArguments), ExtraRewardArguments),
        "",
        "`trl-rubric rgsd` also takes every `JudgeArguments` field, for the settings that need a judge (hybrid RGSD, "
        "`teacher_focus=\"unlearned\"`, `teacher_combine=\"sgsd_gate\"`, `teacher_penalties=\"auto\"`); pure RGSD "
        "calls none. One default differs:",
        "",
        *field_table(own_fields(RGSDJudgeArguments, JudgeArguments), RGSDJudgeArguments),
        "",
        "### `trl-rubric eval` options",
        "",
        "Plus every `JudgeArguments` field.",
        "",
        *field_table(dataclasses.fields(EvalArguments), EvalArguments),
        "",
        "### `trl-rubric gap` options",
        "",
        "Every `trl-rubric eval` option, with these added or changed:",
        "",
        *field_table(own_fields(GapArguments, EvalArguments), GapArguments),
        "",
    ]
    return lines


def render() -> str:
    """The full text of `docs/api.md`."""
    import trl_rubric

    names = list(trl_rubric.__all__)
    placed = {n for _, members in SECTIONS for n in members}
    sections = [(title, [n for n in members if n in names]) for title, members in SECTIONS]
    leftover = sorted(n for n in names if n not in placed)
    if leftover:
        sections.append(("Other", leftover))

    lines = [
        "<!-- Generated by docs/gen_api.py from docstrings and field metadata; do not edit by hand. -->",
        "",
        "# API reference",
        "",
        "Everything below is importable from the top-level package (`from trl_rubric import ...`). Submodules such "
        "as `trl_rubric.evaluation`, `trl_rubric.testing` and `trl_rubric.testing.judge_server` are documented on "
        "their pages ([evaluation](evaluation.md), [quickstart](quickstart.md), [judges](judges.md)).",
        "",
    ]
    for title, _members in sections:
        lines += [f"- [{title}](#{title.lower().replace(' ', '-')})"]
    lines += ["- [Config fields](#config-fields)", ""]
    for title, members in sections:
        lines += [f"## {title}", ""]
        for name in members:
            lines += _object_section(name, getattr(trl_rubric, name))
    lines += _config_fields_section()
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is stale; run: python docs/gen_api.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
