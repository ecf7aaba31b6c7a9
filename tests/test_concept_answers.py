"""An LLM answer as one concept label: normalisation, and each reason an answer is rejected for."""

from __future__ import annotations

import pytest

from dnd.concept_answers import REJECTIONS, check_label, normalise_label


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("Label: Striped textures.", "striped textures"),
        ('  "Dog faces"  ', "dog faces"),
        ("**Concept label:** Red-themed scenes.\nAll of them are red.", "red-themed scenes"),
        ("SUNSET   Skies", "sunset skies"),
        ('\n\n**Label:** "dog faces."', "dog faces"),
    ],
)
def test_answers_are_normalised(answer, label):
    assert normalise_label(answer) == label
    assert check_label(answer, max_words=5) == (label, None)


@pytest.mark.parametrize(
    ("answer", "kind", "reason"),
    [
        ("stripes, dots", "comma", "it contains a comma, so it names several concepts instead of one"),
        ("one two three four five six seven", "too_long", "it has 7 words, more than 5"),
        ("Label: ''", "empty", "it is empty"),
        ('"Zebra fur."', "copy", "it repeats a single description instead of summing up what they share"),
    ],
)
def test_invalid_answers_give_their_kind_and_a_reason(answer, kind, reason):
    assert check_label(answer, max_words=5, copies=frozenset({"zebra fur"})) == (None, (kind, reason))
    assert kind in REJECTIONS


def test_a_copy_is_only_rejected_where_it_is_one():
    assert check_label("Zebra fur", max_words=5) == ("zebra fur", None)
    assert check_label("zebra fur stripes", max_words=5, copies=frozenset({"zebra fur"})) == ("zebra fur stripes", None)
    assert check_label("one two three", max_words=3) == ("one two three", None)
