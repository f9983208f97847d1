"""The attribute vocabulary of the challenge's data, and the caption templates built from it.

Vehicle attribute phrases are "A <colour> <brand> <type>." with any part missing. Pedestrian
attributes are a 21-bit vector; the bit layout below matches the challenge's published example line
(``090000$0,0,1,0,1,0,0,0,1,0,0,0,0,0,1,0,0,0,0,0,0$A female pedestrian ... between 18 and 60 years
old, with her body facing the camera. She is in a short sleeve shirt with an upper logo.``) and is
documented in docs/data-format.md. Relevance only ever compares bits, so data with another layout
still evaluates correctly; only the demo generator's drawings and texts depend on the names.
"""

from __future__ import annotations

from typing import Sequence

COLOURS = ("black", "blue", "brown", "green", "grey", "orange", "pink", "purple", "red", "white", "yellow")
VEHICLE_TYPES = ("Bus", "Microbus", "Minivan", "SUV", "Sedan", "Truck")
# Brands the demo generator draws as marks; real data brings its own (65 in the challenge's training set).
DEMO_BRANDS = ("Audi", "BMW", "Buick", "Chevrolet", "Ford", "Honda", "Hyundai", "Kia", "Mazda",
               "Nissan", "Toyota", "Volkswagen")

# (name, phrase used in captions). Index = bit position in the 21-bit vector.
PEDESTRIAN_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("Male", "male"),
    ("AgeLess18", "under 18 years old"),
    ("Age18-60", "between 18 and 60 years old"),
    ("AgeOver60", "over 60 years old"),
    ("Front", "facing the camera"),
    ("Side", "sideways to the camera"),
    ("Back", "back to the camera"),
    ("LongSleeve", "long sleeve"),
    ("ShortSleeve", "short sleeve"),
    ("LongCoat", "a long coat"),
    ("Trousers", "trousers"),
    ("Shorts", "shorts"),
    ("Skirt&Dress", "a skirt or dress"),
    ("UpperStride", "stripes"),
    ("UpperLogo", "an upper logo"),
    ("UpperPlaid", "plaid"),
    ("Hat", "a hat"),
    ("Glasses", "glasses"),
    ("HandBag", "a handbag"),
    ("ShoulderBag", "a shoulder bag"),
    ("Backpack", "a backpack"),
)
PEDESTRIAN_BITS = len(PEDESTRIAN_ATTRIBUTES)
BIT = {name: index for index, (name, _) in enumerate(PEDESTRIAN_ATTRIBUTES)}
GENDER_BIT = BIT["Male"]
AGE_BITS = (BIT["AgeLess18"], BIT["Age18-60"], BIT["AgeOver60"])
ORIENTATION_BITS = (BIT["Front"], BIT["Side"], BIT["Back"])
SLEEVE_BITS = (BIT["LongSleeve"], BIT["ShortSleeve"])
LOWER_BITS = (BIT["Trousers"], BIT["Shorts"], BIT["Skirt&Dress"])
UPPER_PATTERN_BITS = (BIT["UpperStride"], BIT["UpperLogo"], BIT["UpperPlaid"])
CARRIED_BITS = (BIT["HandBag"], BIT["ShoulderBag"], BIT["Backpack"])

PEDESTRIAN_WORDS = ("pedestrian", "person", "man", "woman", "boy", "girl", "people")


def article(word: str) -> str:
    return "An" if word[:1].lower() in "aeiou" else "A"


def vehicle_phrase(colour: str | None, brand: str | None, vehicle_type: str | None) -> str:
    """The attribute field of a vehicle line: ``A white Audi Sedan.`` (missing parts left out)."""
    words = [part for part in (colour, brand, vehicle_type) if part]
    if not words:
        raise ValueError("a vehicle phrase needs at least one of colour, brand, type")
    return f"{article(words[0])} {' '.join(words)}."


def vehicle_caption(colour: str | None, brand: str | None, vehicle_type: str | None) -> str:
    """The text field of a vehicle line: ``This is a white Audi Sedan.``"""
    phrase = vehicle_phrase(colour, brand, vehicle_type)
    first, rest = phrase.split(" ", 1)
    return f"This is {first.lower()} {rest}"


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def pedestrian_caption(bits: Sequence[int]) -> str:
    """The text field of a pedestrian line, in the challenge's style, from a 21-bit vector."""
    if len(bits) != PEDESTRIAN_BITS:
        raise ValueError(f"expected {PEDESTRIAN_BITS} bits, got {len(bits)}")
    phrase = {i: text for i, (_, text) in enumerate(PEDESTRIAN_ATTRIBUTES)}
    male = bool(bits[GENDER_BIT])
    pronoun, possessive = ("He", "his") if male else ("She", "her")
    first = f"A {'male' if male else 'female'} pedestrian is someone who walks on foot"
    ages = [phrase[i] for i in AGE_BITS if bits[i]]
    if ages:
        first += ", is " + " or ".join(ages)
    orientation = [phrase[i] for i in ORIENTATION_BITS if bits[i]]
    if orientation:
        first += f", with {possessive} body " + " or ".join(orientation)
    carried = [phrase[i] for i in CARRIED_BITS if bits[i]]
    if carried:
        first += " and carrying " + _join(carried)
    sentences = [first + "."]
    sleeves = [phrase[i] for i in SLEEVE_BITS if bits[i]]
    patterns = [phrase[i] for i in UPPER_PATTERN_BITS if bits[i]]
    if sleeves or patterns:
        shirt = f"a {' or '.join(sleeves)} shirt" if sleeves else "a shirt"
        if patterns:
            shirt += " with " + _join(patterns)
        sentences.append(f"{pronoun} is in {shirt}.")
    worn = [phrase[i] for i in LOWER_BITS + (BIT["LongCoat"], BIT["Hat"], BIT["Glasses"]) if bits[i]]
    if worn:
        sentences.append(f"{pronoun} is wearing {_join(worn)}.")
    return " ".join(sentences)
