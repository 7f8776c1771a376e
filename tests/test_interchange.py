"""autorubric rubric files: read (defaults, wrappers, sections, guidelines, options refused) and write (round trip)."""

from __future__ import annotations

import json

import pytest

from trl_rubric.interchange import read_autorubric, to_autorubric, write_autorubric
from trl_rubric.rubric import GUIDELINES_HEADING, Criterion, Rubric, RubricError

CRITERIA = [
    {"name": "thesis", "weight": 3.0, "requirement": "States a clear, arguable thesis"},
    {"requirement": "Cites at least one source"},
    {"name": "padding", "weight": -5, "requirement": "Pads the answer with filler"},
]


def test_weight_defaults_to_ten_and_name_becomes_the_title():
    rubric = read_autorubric(CRITERIA)
    assert [c.text for c in rubric] == [c["requirement"] for c in CRITERIA]
    assert [c.weight for c in rubric] == [3.0, 10.0, -5.0]
    assert [c.title for c in rubric] == ["thesis", None, "padding"]
    assert rubric.guidelines is None


@pytest.mark.parametrize(
    "wrapped",
    [
        {"criteria": CRITERIA},
        {"sections": [{"criteria": CRITERIA[:2]}, {"criteria": CRITERIA[2:]}]},
        [{"criteria": CRITERIA[:1]}, {"criteria": CRITERIA[1:]}],
        {"rubric": CRITERIA},
        {"rubric": {"sections": [{"criteria": CRITERIA}]}},
    ],
)
def test_every_wrapper_gives_the_same_criteria_in_order(wrapped):
    assert read_autorubric(wrapped).criteria == read_autorubric(CRITERIA).criteria


def test_guidelines_are_kept_and_shown_with_the_rubric():
    text = "Judge against a grade 8-12 level."
    for wrapped in (
        {"guidelines": text, "criteria": CRITERIA},
        {"rubric": {"guidelines": text, "sections": [{"criteria": CRITERIA}]}},
    ):
        rubric = read_autorubric(wrapped)
        assert rubric.guidelines == text
        assert rubric.render().endswith(f"{GUIDELINES_HEADING} {text}")
        assert rubric.render("weighted").endswith(text)
    # Our own parser keeps them from the same wrapper.
    assert Rubric.from_any({"guidelines": text, "criteria": ["Is kind"]}).guidelines == text


def test_multi_choice_options_are_refused_naming_the_criterion():
    tone = {
        "name": "tone",
        "requirement": "Which tone?",
        "options": [{"label": "Formal", "value": 1.0}, {"label": "Casual", "value": 0.0}],
    }
    with pytest.raises(RubricError, match=r"autorubric criterion 2 \('tone'\) is multi-choice .*'Formal', 'Casual'"):
        read_autorubric([CRITERIA[0], tone])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([{"weight": 2}], r"autorubric criterion 1 has requirement None"),
        ([{"requirement": "x", "weight": "high"}], r"autorubric criterion 1 has weight 'high'"),
        ({"guidelines": 5, "criteria": CRITERIA}, r"guidelines 5; expected a string"),
        ({"items": []}, r"expected 'criteria', 'sections' or 'rubric'"),
        ([], r"no criteria"),
    ],
)
def test_bad_autorubric_input_names_the_problem(bad, message):
    with pytest.raises(RubricError, match=message):
        read_autorubric(bad)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_round_trip_keeps_text_weight_title_category_and_guidelines(tmp_path, suffix):
    rubric = Rubric(
        (
            Criterion("Names a cause", 5, "essential", "cause"),
            Criterion("Gives a dose", 3, "essential"),
            Criterion("Is short", 1, "style", "short"),
            Criterion("Recommends a dangerous dose", -10, "pitfall", "danger"),
            Criterion("Is polite", 1, "style"),
        ),
        guidelines="Adult patients only.",
    )
    path = tmp_path / f"rubric{suffix}"
    assert write_autorubric(rubric, path) == []
    assert read_autorubric(path) == rubric
    assert read_autorubric(str(path)) == rubric


def test_written_file_has_autorubric_shape_and_reports_lost_tags(tmp_path):
    rubric = Rubric((Criterion("Mentions rest", 2, tags=("rule:regex:rest",)), Criterion("Is kind", 1)))
    path = tmp_path / "r.json"
    lost = write_autorubric(rubric, path)
    assert lost == ["criterion 1 ('Mentions rest'): tags ['rule:regex:rest']"]
    assert json.loads(path.read_text()) == [
        {"requirement": "Mentions rest", "weight": 2.0},
        {"requirement": "Is kind", "weight": 1.0},
    ]
    body, _ = to_autorubric(Rubric((Criterion("a"),), guidelines="g"))
    assert body == {"guidelines": "g", "criteria": [{"requirement": "a", "weight": 1.0}]}


def test_json_and_yaml_text_are_read_like_files():
    yaml_text = "guidelines: Be strict.\ncriteria:\n  - requirement: Names a cause\n    weight: 4\n"
    rubric = read_autorubric(yaml_text)
    assert rubric.guidelines == "Be strict." and rubric[0].weight == 4.0
    assert read_autorubric(json.dumps(CRITERIA)) == read_autorubric(CRITERIA)
