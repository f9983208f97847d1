"""The challenge's vocabulary and caption templates (tasks/core/vocab.py): the texts the demo data carries
and the label parser reads back."""

from __future__ import annotations

import pytest

from tasks.core import labels
from tasks.core.vocab import PEDESTRIAN_BITS, pedestrian_caption, vehicle_caption, vehicle_phrase


def test_the_challenges_example_pedestrian_line_is_reproduced_from_its_bits():
    # the challenge's published example (docs/data-format.md): 090000$0,0,1,0,1,0,0,0,1,0,0,0,0,0,1,0,...
    bits = [0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert len(bits) == PEDESTRIAN_BITS
    assert pedestrian_caption(bits) == (
        "A female pedestrian is someone who walks on foot, is between 18 and 60 years old, with her body "
        "facing the camera. She is in a short sleeve shirt with an upper logo.")
    with pytest.raises(ValueError, match="expected 21 bits"):
        pedestrian_caption(bits[:-1])


@pytest.mark.parametrize("parts, phrase, caption", [
    (("white", "Audi", "Sedan"), "A white Audi Sedan.", "This is a white Audi Sedan."),
    (("orange", None, "SUV"), "An orange SUV.", "This is an orange SUV."),
    ((None, "Audi", None), "An Audi.", "This is an Audi."),
])
def test_vehicle_phrases_leave_out_missing_parts_and_parse_back(parts, phrase, caption):
    assert vehicle_phrase(*parts) == phrase
    assert vehicle_caption(*parts) == caption
    parsed = labels.parse_vehicle_phrase(phrase)
    assert (parsed.colour, parsed.brand, parsed.vehicle_type) == parts


def test_a_vehicle_phrase_needs_one_part():
    with pytest.raises(ValueError, match="at least one of colour, brand, type"):
        vehicle_phrase(None, None, None)
