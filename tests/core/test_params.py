"""params.yaml: the committed file is valid; bad keys and values are errors naming key and line."""

from __future__ import annotations

import pytest

from tasks.core import params
from tasks.core.errors import InputError
from tests.support import ROOT
from tests.support.params import params_error


def test_committed_params_yaml_is_valid_and_complete():
    loaded = params.load(ROOT / "params.yaml")
    assert set(loaded) == set(params.SCHEMA)
    for section, keys in params.SCHEMA.items():
        assert set(loaded[section]) == set(keys), f"params.yaml lacks keys of {section}"


@pytest.mark.parametrize("text, words, line", [
    ("train:\n  epochs: 3\n  lrr: 0.1\n", "unknown key 'train.lrr'", 3),
    ("trian:\n  epochs: 3\n", "unknown section 'trian'", 1),
    ("train:\n  epochs: -2\n", "train.epochs", 2),
    ("train:\n  epochs: three\n", "wrong type", 2),
    ("train:\n  lr: true\n", "wrong type", 2),
    ("data:\n  on_error: ignore\n", "'fail' or 'quarantine'", 2),
    ("evaluate:\n  pedestrian_relevance: loose\n", "'strict' or 'inclusion'", 2),
])
def test_bad_params_name_key_and_line(tmp_path, text, words, line):
    error = params_error(tmp_path, text)
    assert words in str(error)
    assert error.line == line and f"params.yaml:{line}" in str(error)


def test_integers_are_accepted_where_numbers_are_expected_and_defaults_fill_in(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 1\n")
    loaded = params.load(path)
    assert loaded["train"]["lr"] == 1 and loaded["train"]["epochs"] == params.SCHEMA["train"]["epochs"].default


def test_overrides_are_validated_too(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 3\n")
    assert params.load(path, {"train.epochs": 5})["train"]["epochs"] == 5
    with pytest.raises(InputError, match="train.epochs"):
        params.load(path, {"train.epochs": 0})


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: [3\n")
    with pytest.raises(InputError, match="not valid YAML"):
        params.load(path)


def test_the_committed_values_are_the_schemas_defaults():
    """The schema (tasks/core/params.py) is where a default is decided; params.yaml is the copy DVC
    reads its stage parameters from, with comments for people. They may not drift apart."""
    import yaml
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    drifted = [f"{section}.{name}: params.yaml {committed[section][name]!r}, schema {key.default!r}"
               for section, keys in params.SCHEMA.items() for name, key in keys.items()
               if committed[section][name] != key.default]
    assert drifted == []


@pytest.mark.parametrize("dotted, good, bad", [
    ("train.epochs", 1, 0), ("train.batch_size", 2, 1), ("train.lr", 1e-7, 0.0), ("mlflow.confidence", 1.0, 1.5),
    ("data.on_error", "fail", "ignore"), ("mlflow.experiment", "x", " "), ("evaluate.top_k", 1000, 1001),
])
def test_the_check_message_and_form_schema_come_from_one_set_of_limits(dotted, good, bad):
    """What the loader accepts, what its error says and what the Airflow form's JSON schema allows
    agree, because all three are derived from the same Key fields."""
    import jsonschema
    key = params.key(dotted)
    assert key.check(good) and not key.check(bad)
    jsonschema.validate(good, key.json_schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad if not (isinstance(bad, str) and not bad.strip()) else "", key.json_schema())
    assert key.expected in key.describe()
