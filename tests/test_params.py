"""params.yaml: the committed file is valid; bad keys and values are errors naming key and line."""

from __future__ import annotations

import pytest

from tasks import params
from tasks.errors import InputError
from tests.conftest import ROOT


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
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        params.load(path)
    assert words in str(info.value)
    assert info.value.line == line and f"params.yaml:{line}" in str(info.value)


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
