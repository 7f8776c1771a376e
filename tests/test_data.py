import json

import pytest
from datasets import Dataset, DatasetDict

from trl_rubric import RubricDatasetError, load_rubric_dataset

RAR = {
    "question": "What is the adult dose of paracetamol?",
    "rubric": [
        {"title": "Dose", "description": "Essential Criteria: States 500 mg to 1 g.", "weight": 5},
        {"title": "Overdose", "description": "Pitfall Criteria: Recommends more than 4 g a day.", "weight": -2},
    ],
    "reference_answer": "500 mg to 1 g every 4-6 h, max 4 g/day.",
}
HEALTHBENCH = {
    "prompt": [{"role": "user", "content": "I have chest pain, what should I do?"}],
    "rubrics": [{"criterion": "Advises emergency care", "points": 10, "tags": ["axis:completeness"]}],
    "prompt_id": "hb-1",
}
RUBRICHUB = {"question": "Explain photosynthesis.", "rubrics": [{"criterion": "Mentions light", "points": 3}]}
RESEARCH = {"prompt": "Survey RLHF.", "rubrics": [{"criterion": "Cites papers", "weight": 2, "axis": "evidence"}]}


def test_rar_rows_are_normalised_and_extra_columns_pass_through():
    ds = load_rubric_dataset([RAR])
    row = ds[0]
    assert row["prompt"] == [{"role": "user", "content": RAR["question"]}]
    assert [(c["text"], c["weight"], c["category"]) for c in row["rubric"]] == [
        ("States 500 mg to 1 g.", 5.0, "essential"),
        ("Recommends more than 4 g a day.", -2.0, "pitfall"),
    ]
    assert row["reference_answer"] == RAR["reference_answer"]
    assert "question" not in ds.column_names


def test_healthbench_messages_and_tags():
    ds = load_rubric_dataset([HEALTHBENCH])
    assert ds[0]["prompt"] == HEALTHBENCH["prompt"]
    assert ds[0]["rubric"][0]["category"] == "completeness"
    assert ds[0]["rubric"][0]["tags"] == ["axis:completeness"]
    assert ds[0]["prompt_id"] == "hb-1"


def test_rubrichub_and_researchrubrics_columns():
    assert load_rubric_dataset([RUBRICHUB])[0]["rubric"][0]["weight"] == 3.0
    ds = load_rubric_dataset([RESEARCH], conversational=False)
    assert ds[0]["prompt"] == "Survey RLHF."
    assert ds[0]["rubric"][0]["category"] == "evidence"


def test_local_jsonl_file_with_json_string_rubrics_and_explicit_columns(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"q": "Q1", "crit": json.dumps(["be brief", "be kind"])}, {"q": "Q2", "crit": json.dumps(["cite"])}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    ds = load_rubric_dataset(str(path), prompt_column="q", rubric_column="crit", system_prompt="You are helpful.")
    assert len(ds) == 2
    assert ds[1]["prompt"] == [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Q2"}]
    assert [c["text"] for c in ds[0]["rubric"]] == ["be brief", "be kind"]


def test_dataset_dict_split_and_save_to_disk(tmp_path):
    dd = DatasetDict({"test": Dataset.from_list([RUBRICHUB, RUBRICHUB])})
    assert len(load_rubric_dataset(dd, split="test", num_samples=1)) == 1
    dd.save_to_disk(tmp_path / "dd")
    assert len(load_rubric_dataset(str(tmp_path / "dd"), split="test")) == 2
    with pytest.raises(RubricDatasetError, match="no split 'train'"):
        load_rubric_dataset(dd)


def _bad(rows, **kwargs):
    with pytest.raises(RubricDatasetError) as info:
        load_rubric_dataset(rows, **kwargs)
    return str(info.value)


def test_missing_prompt_names_row_and_field():
    msg = _bad([RUBRICHUB, {"question": None, "rubrics": [{"criterion": "x", "points": 1}]}])
    assert "rubric row 1" in msg and "'question'" in msg


def test_empty_rubric_names_row_and_field():
    msg = _bad([RUBRICHUB, RUBRICHUB, {"question": "q", "rubrics": []}])
    assert "rubric row 2" in msg and "'rubrics'" in msg and "empty" in msg


def test_non_numeric_weight_names_row_field_and_value():
    row = {"question": "q", "rubrics": [{"criterion": "a", "points": 1}, {"criterion": "b", "points": "high"}]}
    msg = _bad([row])
    assert msg == "rubric row 0: field 'rubrics': criterion 2 has points 'high'; expected a number"


def test_no_positive_weight_names_row():
    msg = _bad([RUBRICHUB, {"question": "q", "rubrics": [{"criterion": "a", "points": -1}]}])
    assert "rubric row 1" in msg and "no criterion with a positive weight" in msg


def test_unknown_format_names_row_and_keys():
    msg = _bad([{"question": "q", "rubrics": [{"name": "a", "score": 1}]}])
    assert "rubric row 0" in msg and "['name', 'score']" in msg and "no known rubric format" in msg
    assert "unknown rubric format 'xml'" in _bad([RUBRICHUB], format="xml")


def test_missing_columns_and_empty_dataset():
    assert "found no rubric column" in _bad([{"question": "q", "answer": "a"}])
    assert "rubric column 'crit' is not in the dataset" in _bad([RUBRICHUB], rubric_column="crit")
    assert "dataset is empty" in _bad(Dataset.from_dict({"prompt": [], "rubric": []}))
    assert "does not exist" in _bad("./no/such/file.jsonl")


def test_skip_mode_drops_bad_rows_and_warns(caplog):
    rows = [RUBRICHUB, {"question": "q", "rubrics": []}, RUBRICHUB]
    ds = load_rubric_dataset(rows, on_error="skip")
    assert len(ds) == 2
    assert "skipped 1 malformed rubric rows of 3" in caplog.text


def test_empty_files_name_the_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "empty.json").write_text("[]")
    assert "is empty" in _bad(str(tmp_path / "empty.jsonl"))
    assert "is empty" in _bad(str(tmp_path / "empty.json"))
    (tmp_path / "broken.jsonl").write_text('{"question": "q", "rubrics": [\n')
    assert "cannot read dataset file" in _bad(str(tmp_path / "broken.jsonl"))


def _tagged(*tags):
    return {
        "question": "Greet me.",
        "rubric": [
            {"text": "Is friendly", "weight": 1, "tags": []},
            {"text": "Starts with hi", "weight": 1, "tags": list(tags)},
        ],
    }


def test_misspelled_rule_kind_names_row_criterion_and_known_kinds():
    msg = _bad([_tagged("rule:starts_with:hi"), _tagged("rule:startswith:hi")])
    assert msg.startswith("rubric row 1, criterion 2: ")
    assert "unknown rule kind 'startswith'; known: contains, not_contains, regex, max_words, min_words, " in msg
    assert "starts_with" in msg


def test_malformed_rule_arguments_are_refused_at_load():
    assert "expected a whole number of words" in _bad([_tagged("rule:min_words:many")])
    assert "invalid regular expression" in _bad([_tagged("rule:regex:(unclosed")])
    assert "has no argument" in _bad([_tagged("rule:contains:")])


def test_valid_rule_tags_and_free_tags_load_and_a_local_rar_file_keeps_them(tmp_path):
    row = {
        "question": "Greet me.",
        "rubric": [
            {
                "title": "Hi",
                "description": "Essential Criteria: Starts with hi.",
                "weight": 2,
                "tags": ["rule:starts_with:hi", "axis:style"],
            },
            {"title": "Short", "description": "Important Criteria: Short.", "weight": 1, "tags": ["rule:max_words:9"]},
        ],
    }
    path = tmp_path / "rar.jsonl"
    path.write_text(json.dumps(row) + "\n")
    ds = load_rubric_dataset(str(path))
    assert [c["tags"] for c in ds[0]["rubric"]] == [["rule:starts_with:hi", "axis:style"], ["rule:max_words:9"]]
