import json

import pytest

from trl_rubric import Criterion, Rubric, RubricError

RAR_ROWS = [
    {"title": "Dose", "description": "Essential Criteria: States the adult dose of 500 mg.", "weight": 5},
    {"title": "Side effects", "description": "Important Criteria: Lists nausea as a side effect.", "weight": 3},
    {"title": "Follow-up", "description": "Optional Criteria: Suggests a follow-up visit.", "weight": 1},
    {"title": "Dangerous advice", "description": "Pitfall Criteria: Recommends doubling the dose.", "weight": -2},
]
HEALTHBENCH_ROWS = [
    {"criterion": "Advises calling emergency services", "points": 10, "tags": ["level:example", "axis:completeness"]},
    {"criterion": "Suggests waiting a week", "points": -6, "tags": ["level:example", "axis:accuracy"]},
]
RUBRICHUB_ROWS = [
    {"criterion": "Defines photosynthesis", "points": 4},
    {"criterion": "Mentions chlorophyll", "points": 2},
]
RESEARCH_ROWS = [
    {"criterion": "Cites at least two studies", "weight": 3, "axis": "evidence"},
    {"criterion": "Explains the limitation", "weight": 1.5, "axis": "reasoning"},
]


def test_rar_category_prefix_is_stripped_into_category():
    rubric = Rubric.from_any(RAR_ROWS)
    assert [c.category for c in rubric] == ["essential", "important", "optional", "pitfall"]
    assert rubric[0].text == "States the adult dose of 500 mg."
    assert rubric[0].title == "Dose"
    assert [c.weight for c in rubric] == [5.0, 3.0, 1.0, -2.0]


@pytest.mark.parametrize("polarity,expected", [("as_is", -2.0), ("negative", -2.0), ("positive", 2.0)])
def test_rar_pitfall_polarity_is_a_setting(polarity, expected):
    rows = [dict(r) for r in RAR_ROWS]
    assert Rubric.from_any(rows, pitfall_polarity=polarity)[3].weight == expected
    rows[3]["weight"] = 2  # a source that writes pitfalls with positive points
    flipped = Rubric.from_any(rows, pitfall_polarity=polarity)[3].weight
    assert flipped == {"as_is": 2.0, "negative": -2.0, "positive": 2.0}[polarity]
    # non-pitfall criteria are never flipped
    assert Rubric.from_any(rows, pitfall_polarity=polarity)[0].weight == 5.0


def test_healthbench_keeps_negative_points_and_axis_tag():
    rubric = Rubric.from_any(HEALTHBENCH_ROWS)
    assert rubric.to_list() == [
        {
            "text": "Advises calling emergency services",
            "weight": 10.0,
            "category": "completeness",
            "title": None,
            "tags": ["level:example", "axis:completeness"],
        },
        {
            "text": "Suggests waiting a week",
            "weight": -6.0,
            "category": "accuracy",
            "title": None,
            "tags": ["level:example", "axis:accuracy"],
        },
    ]


def test_rubrichub_points_become_weights():
    rubric = Rubric.from_any(RUBRICHUB_ROWS)
    assert [(c.text, c.weight, c.category) for c in rubric] == [
        ("Defines photosynthesis", 4.0, None),
        ("Mentions chlorophyll", 2.0, None),
    ]


def test_researchrubrics_axis_becomes_category():
    rubric = Rubric.from_any(RESEARCH_ROWS)
    assert [(c.text, c.weight, c.category) for c in rubric] == [
        ("Cites at least two studies", 3.0, "evidence"),
        ("Explains the limitation", 1.5, "reasoning"),
    ]


def test_plain_strings_get_weight_one():
    rubric = Rubric.from_any(["Be polite", "Answer in French"])
    assert [(c.text, c.weight) for c in rubric] == [("Be polite", 1.0), ("Answer in French", 1.0)]


@pytest.mark.parametrize("rows", [RAR_ROWS, HEALTHBENCH_ROWS, RUBRICHUB_ROWS, RESEARCH_ROWS, ["a", "b"]])
def test_json_string_and_rubric_round_trip_to_the_same_values(rows):
    direct = Rubric.from_any(rows)
    assert Rubric.from_any(json.dumps(rows)) == direct
    assert Rubric.from_any(direct) is direct
    assert Rubric.from_any(direct.to_list()) == direct


def test_score_counts_penalties_and_divides_by_positive_points():
    rubric = Rubric.from_any(HEALTHBENCH_ROWS)  # +10, -6
    assert rubric.score([True, False]) == pytest.approx(1.0)
    assert rubric.score([True, True]) == pytest.approx(4 / 10)
    assert rubric.score([False, True]) == pytest.approx(-0.6)  # below zero per example
    assert rubric.max_score == 10


def test_score_leaves_unknown_verdicts_out_of_both_sums():
    rubric = Rubric.from_any([{"text": "a", "weight": 3}, {"text": "b", "weight": 1}, {"text": "c", "weight": -2}])
    assert rubric.score([None, True, False]) == pytest.approx(1.0)
    assert rubric.score([True, None, True]) == pytest.approx((3 - 2) / 3)
    assert rubric.score([None, None, True]) is None
    assert rubric.score({1: True}) == pytest.approx(1.0)  # dict form, missing = unknown


def test_unweighted_score_counts_each_criterion_once():
    rubric = Rubric.from_any([{"text": "a", "weight": 5}, {"text": "b", "weight": 1}, {"text": "c", "weight": -3}])
    assert rubric.score([True, False, True], weighted=False) == pytest.approx((1 - 1) / 2)
    assert rubric.score([False, True, False], weighted=False) == pytest.approx(1 / 2)


def test_score_rejects_wrong_number_of_verdicts():
    with pytest.raises(RubricError, match="2 verdicts for a rubric of 3"):
        Rubric.from_any(["a", "b", "c"]).score([True, False])


def test_render_styles():
    rubric = Rubric.from_any(RAR_ROWS[:2] + RAR_ROWS[3:])
    assert rubric.render("numbered") == (
        "A good answer contains:\n1. States the adult dose of 500 mg.\n2. Lists nausea as a side effect.\n"
        "A good answer avoids:\n3. Recommends doubling the dose."
    )
    assert rubric.render("weighted") == (
        "A good answer contains:\n"
        "1. [essential, +5 points] States the adult dose of 500 mg.\n"
        "2. [important, +3 points] Lists nausea as a side effect.\n"
        "A good answer avoids:\n"
        "3. [pitfall, -2 points] Recommends doubling the dose."
    )
    parsed = json.loads(rubric.render("json"))
    assert parsed[2] == {
        "id": 3,
        "text": "Recommends doubling the dose.",
        "weight": -2.0,
        "category": "pitfall",
        "good_answer": "avoids",
    }
    assert parsed[0]["good_answer"] == "contains"
    # a rubric without penalties keeps the plain list
    assert Rubric.from_any(["a", "b"]).render("numbered") == "1. a\n2. b"
    with pytest.raises(RubricError, match="unknown render style 'fancy'"):
        rubric.render("fancy")


# Rows in each public format with a penalty; the penalty must never be listed as something a good answer contains.
PENALTY_ROWS = {
    "healthbench": (
        [
            {"criterion": "Advises keeping the scheduled postpartum appointment", "points": 7, "tags": ["axis:x"]},
            {
                "criterion": "Advises patient not to attend scheduled postpartum appointments",
                "points": -10,
                "tags": [],
            },
        ],
        "as_is",
    ),
    "rar_medicine": (
        [
            {"title": "Dose", "description": "Essential Criteria: States the adult dose of 500 mg.", "weight": 5},
            {"title": "Bad", "description": "Pitfall Criteria: Recommends doubling the dose.", "weight": -2},
        ],
        "negative",
    ),
    "researchrubrics": (
        [
            {"criterion": "Cites at least two studies", "weight": 3, "axis": "evidence"},
            {"criterion": "Fabricates a citation", "weight": -4, "axis": "evidence"},
        ],
        "as_is",
    ),
    "rubrichub": (
        [{"criterion": "Defines it", "points": 4}, {"criterion": "Gives a wrong formula", "points": -3}],
        "as_is",
    ),
    "normalized": ([{"text": "Defines it", "weight": 2}, {"text": "Gives a wrong formula", "weight": -1}], "as_is"),
}


def _listed_under(rendered: str, text: str) -> str:
    heading = None
    for line in rendered.splitlines():
        if line.startswith("A good answer"):
            heading = line
        elif text in line:
            return heading
    raise AssertionError(f"{text!r} not in {rendered!r}")


@pytest.mark.parametrize("source", sorted(PENALTY_ROWS))
@pytest.mark.parametrize("style", ["numbered", "weighted"])
def test_penalties_render_as_things_a_good_answer_avoids(source, style):
    rows, polarity = PENALTY_ROWS[source]
    rubric = Rubric.from_any(rows, pitfall_polarity=polarity)
    rendered = rubric.render(style)
    assert _listed_under(rendered, rubric[0].text) == "A good answer contains:"
    assert _listed_under(rendered, rubric[1].text) == "A good answer avoids:"
    parsed = json.loads(rubric.render("json"))
    assert [c["good_answer"] for c in parsed] == ["contains", "avoids"]


def test_rar_science_avoidance_pitfalls_follow_pitfall_polarity():
    # RaR-Science writes pitfalls as avoidance ("Does not ...") with weight -2: read positively, they are goals.
    rows = [
        {"title": "Law", "description": "Essential Criteria: States Ohm's law.", "weight": 5},
        {"title": "Units", "description": "Pitfall Criteria: Does not confuse volts with amperes.", "weight": -2},
    ]
    as_goal = Rubric.from_any(rows, pitfall_polarity="positive").render("numbered")
    assert as_goal == "1. States Ohm's law.\n2. Does not confuse volts with amperes."
    as_mistake = Rubric.from_any(rows, pitfall_polarity="negative").render("numbered")
    assert _listed_under(as_mistake, "Does not confuse") == "A good answer avoids:"


@pytest.mark.parametrize(
    "obj,message",
    [
        ([], "rubric is empty"),
        ([{"text": "a", "weight": -1}], "no criterion with a positive weight"),
        (
            [{"text": "a", "weight": 1}, {"text": "b", "weight": "high"}],
            "criterion 2 has weight 'high'; expected a number",
        ),
        ([{"criterion": "", "points": 1}], "criterion 1 has criterion ''"),
        ([{"foo": 1}], "criterion 1 has keys \\['foo'\\], which match no known rubric format"),
        ("not json", "not valid JSON"),
        (None, "expected a list of criteria"),
    ],
)
def test_bad_rubrics_name_the_criterion_field_and_value(obj, message):
    with pytest.raises(RubricError, match=message):
        Rubric.from_any(obj)


def test_criterion_is_hashable_and_frozen():
    c = Criterion("x", 2.0, tags=("a",))
    assert hash(c) == hash(Criterion("x", 2.0, tags=("a",)))
    with pytest.raises(AttributeError):
        c.weight = 3.0
