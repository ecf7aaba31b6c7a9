"""Prompt files (``prompts/*.md``): reading them, their grammar and the one placeholder check.

Every prompt the project sends is a file in the prompts folder (``prompts_dir``), so its text can be read, edited
and measured without touching code, and its text (not its path) enters the cache keys of what it makes. A file is a
note for readers, never sent, followed by ``## <section>`` lines that open its parts:

- a **chat prompt** (:class:`ChatTemplate`: stage 4's and the vision captioner's) has an optional ``## system``
  section, ``## user`` and ``## assistant`` turns alternating (worked examples) and ending with the ``## user`` turn
  that asks, and one ``## retry`` section, the turn added when an answer is unusable;
- a **single prompt** (:func:`single_prompt`: stage 5's text-to-image prompt, CoSy's) has one ``## prompt`` section.

Sections are ``str.format`` templates: :func:`check_placeholders` says which placeholders each may hold.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dnd.errors import DnDError

#: A chat request's turns: ``(role, content)`` pairs, role ``system``, ``user`` or ``assistant``.
Messages = tuple[tuple[str, str], ...]

_CHAT_SECTION = re.compile(r"^## (system|user|assistant|retry)[ \t]*$", re.MULTILINE)
_PROMPT_SECTION = re.compile(r"^## prompt[ \t]*$", re.MULTILINE)


def read_prompt(prompts_dir: Path, name: str) -> str:
    """The text of prompt file ``name`` in ``prompts_dir``; raises :class:`DnDError` naming the folder when it is
    missing."""
    path = prompts_dir / name
    if not path.is_file():
        raise DnDError(f"prompt file {path} is missing (prompts are read from {prompts_dir})")
    return path.read_text()


def format_fix(name: str) -> str:
    """How to fix a malformed prompt file ``name``, for the end of an error message."""
    return f"fix prompts/{name} (the note at its top describes the format)"


def check_placeholders(
    name: str, where: str, body: str, allowed: Iterable[str], fix: str, required: Iterable[str] = ()
) -> None:
    """Raise :class:`DnDError` naming the problem and ``fix`` unless ``body`` (the part ``where`` of prompt
    ``name``, e.g. "'## retry' section") is a valid ``str.format`` template whose placeholders are all ``allowed``
    and include every ``required`` one."""
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(body) if field is not None}
    except ValueError as exc:
        raise DnDError(f"prompt {name}, {where}: {exc} (write a literal brace as {{{{ or }}}}); {fix}") from None
    allowed = set(allowed)
    unknown = sorted(fields - allowed)
    if unknown:
        raise DnDError(
            f"prompt {name}, {where}: unknown placeholder(s) {', '.join(unknown)}; allowed there: "
            f"{', '.join(sorted(allowed))}; {fix}"
        )
    missing = sorted(set(required) - fields)
    if missing:
        placeholders = ", ".join(f"{{{field}}}" for field in missing)
        raise DnDError(f"prompt {name}, {where} must contain the placeholder {placeholders}; {fix}")


def single_prompt(name: str, text: str, placeholder: str, fix: str | None = None) -> str:
    """The template under the one ``## prompt`` line of prompt file ``name`` (its ``text``), whose one placeholder
    is ``{placeholder}``; raises :class:`DnDError` naming the problem and ``fix`` (default: fix the file)
    otherwise."""
    fix = fix or format_fix(name)
    parts = _PROMPT_SECTION.split(text)
    if len(parts) != 2 or not parts[1].strip():
        raise DnDError(f"prompt {name}: expected one '## prompt' line with the prompt below it; {fix}")
    template = parts[1].strip()
    check_placeholders(name, "'## prompt' section", template, {placeholder}, fix, required={placeholder})
    return template


@dataclass(frozen=True)
class ChatTemplate:
    """A chat prompt file: the chat turns of a request (system, worked examples, the question) and the re-ask turn.

    Turns may hold the placeholders ``{<subject>}`` (what is asked about) and the ``shared`` ones; the retry turn
    ``{reason}`` (why the answer was unusable) and the ``shared`` ones.
    """

    name: str
    turns: Messages
    retry: str

    @classmethod
    def parse(cls, name: str, text: str, subject: str, shared: tuple[str, ...] = ()) -> ChatTemplate:
        """Read prompt file ``name`` (its ``text``); raise :class:`DnDError` naming the problem when malformed."""
        parts = _CHAT_SECTION.split(text)
        sections = [(role, body.strip()) for role, body in zip(parts[1::2], parts[2::2], strict=True)]
        turns = tuple((role, body) for role, body in sections if role != "retry")
        retries = [body for role, body in sections if role == "retry"]
        roles = [role for role, _ in turns]
        conversation = roles[1:] if roles[:1] == ["system"] else roles
        alternates = all(role == ("user" if i % 2 == 0 else "assistant") for i, role in enumerate(conversation))
        fix = format_fix(name)
        if not conversation or not alternates or len(conversation) % 2 == 0 or len(retries) != 1:
            raise DnDError(
                f"prompt {name}: expected an optional '## system' section, then '## user' and '## assistant' turns "
                f"alternating and ending with a '## user' turn, and one '## retry' section; {fix}"
            )
        if any(not body for _, body in sections):
            raise DnDError(f"prompt {name}: a section is empty; {fix}")
        for number, (role, body) in enumerate(turns, start=1):
            last = number == len(turns)
            where = "the last '## user' turn" if last else f"'## {role}' section"
            check_placeholders(name, where, body, {subject, *shared}, fix, required={subject} if last else ())
        check_placeholders(name, "the '## retry' section", retries[0], {"reason", *shared}, fix, required={"reason"})
        return cls(name, turns, retries[0])

    @property
    def text(self) -> str:
        """Every section's template, in order, one after another: what a name that depends on the prompt hashes."""
        return "\n".join([*(body for _, body in self.turns), self.retry])

    def messages(self, **values: object) -> Messages:
        """The request's ``(role, content)`` turns with the placeholders filled."""
        return tuple((role, body.format(**values)) for role, body in self.turns)

    def reask(self, **values: object) -> str:
        """The user turn that asks again after an unusable answer (``values`` include ``reason``)."""
        return self.retry.format(**values)
