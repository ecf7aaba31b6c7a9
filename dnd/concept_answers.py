"""An LLM's answer as one concept label: how it is normalised and when it is rejected (stage 4).

:func:`normalise_label` cleans an answer up (quotes, a ``Label:`` prefix, case, spacing); :class:`ConceptAnswer`
rejects what is still no single concept label, for one of the :data:`REJECTIONS` reasons, worded to be sent back to
the model when it is asked again.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

_QUOTES = "\"'`*“”‘’«»"
# A leading "Label:", "Concept label:", "Answer:" ... that models like to prepend (up to three words and a colon).
_PREFIX = re.compile(r"^(?:[a-z][\w-]*[ \t]*){1,3}:\s*", re.IGNORECASE)

#: Why an answer can be rejected (the error types of :class:`ConceptAnswer`), counted per run in the manifest.
REJECTIONS = ("empty", "comma", "too_long", "copy")


def normalise_label(text: str) -> str:
    """``text``'s first non-empty line, stripped of quotes, a ``Label:``-style prefix and a trailing period, lower-case,
    single-spaced."""
    line = next((line for line in text.splitlines() if line.strip()), "")
    previous = None
    while line != previous:  # the strips can uncover each other, e.g. '**Label:** "dog faces."'
        previous = line
        line = _PREFIX.sub("", line.strip().strip(_QUOTES).strip().rstrip("."))
    return " ".join(line.lower().split())


class ConceptAnswer(BaseModel):
    """An LLM answer as a concept label.

    Validate with ``context={"max_words": int, "copies": set[str]}``: ``copies`` are normalised descriptions the label
    may not merely repeat.
    """

    label: str

    @field_validator("label", mode="before")
    @classmethod
    def _normalise(cls, value: object) -> str:
        return normalise_label(str(value))

    @field_validator("label")
    @classmethod
    def _check(cls, label: str, info: ValidationInfo) -> str:
        max_words, copies = info.context["max_words"], info.context["copies"]
        words = len(label.split())
        if not words:
            raise PydanticCustomError("empty", "it is empty")
        if "," in label:
            raise PydanticCustomError("comma", "it contains a comma, so it names several concepts instead of one")
        if words > max_words:
            raise PydanticCustomError(
                "too_long", "it has {words} words, more than {max_words}", {"words": words, "max_words": max_words}
            )
        if label in copies:
            raise PydanticCustomError("copy", "it repeats a single description instead of summing up what they share")
        return label


def check_label(
    text: str, max_words: int, copies: frozenset[str] = frozenset()
) -> tuple[str | None, tuple[str, str] | None]:
    """``(label, None)`` when ``text`` is a usable concept label of at most ``max_words`` words that is none of
    ``copies``, else ``(None, (kind, reason))`` with ``kind`` one of :data:`REJECTIONS` and ``reason`` worded for
    the model."""
    try:
        answer = ConceptAnswer.model_validate({"label": text}, context={"max_words": max_words, "copies": copies})
    except ValidationError as exc:
        error = exc.errors()[0]
        return None, (error["type"], error["msg"])
    return answer.label, None
