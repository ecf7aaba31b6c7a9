"""Prompt files: every file in prompts/ reads with its grammar, the chat and single-prompt grammars, and the one
placeholder check with its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from dnd.errors import DnDError
from dnd.prompts import ChatTemplate, check_placeholders, read_prompt, single_prompt

PROMPTS = Path(__file__).resolve().parents[1] / "prompts"


def test_every_prompt_file_reads_with_its_grammar():
    chats = {"simplify_caption.md": "caption", "summarize_concepts.md": "captions"}
    for name, subject in chats.items():
        template = ChatTemplate.parse(name, read_prompt(PROMPTS, name), subject, ("max_words",))
        assert [role for role, _ in template.turns][:: len(template.turns) - 1] == ["system", "user"]
    vision = ChatTemplate.parse("caption_vision.md", read_prompt(PROMPTS, "caption_vision.md"), "count", ("count",))
    assert [role for role, _ in vision.turns] == ["system", "user"]
    assert single_prompt("synthesize.md", read_prompt(PROMPTS, "synthesize.md"), "concept") == (
        "One realistic image of {concept}"
    )
    assert single_prompt("cosy.md", read_prompt(PROMPTS, "cosy.md"), "description") == (
        "realistic photo of a close up of {description}"  # CoSy's published prompt
    )
    assert sorted(path.name for path in PROMPTS.glob("*.md")) == sorted(
        [*chats, "caption_vision.md", "synthesize.md", "cosy.md"]
    )


def test_a_missing_prompt_file_names_the_folder(tmp_path):
    with pytest.raises(DnDError, match=f"prompt file {tmp_path / 'x.md'} is missing \\(prompts are read from"):
        read_prompt(tmp_path, "x.md")


def test_a_chat_template_fills_its_turns_and_leaves_the_note_out():
    text = (
        "A note for readers: {not a placeholder\n\n## system\nAnswer in {max_words} words.\n\n## user\nQ: sky\n\n"
        "## assistant\nblue\n\n## user\nQ: {thing}\n\n## retry\nNo: {reason}. At most {max_words} words.\n"
    )
    template = ChatTemplate.parse("t.md", text, "thing", ("max_words",))
    assert template.messages(thing="grass", max_words=2) == (
        ("system", "Answer in 2 words."),
        ("user", "Q: sky"),
        ("assistant", "blue"),
        ("user", "Q: grass"),
    )
    assert template.reask(reason="too long", max_words=2) == "No: too long. At most 2 words."
    assert (
        template.text
        == "Answer in {max_words} words.\nQ: sky\nblue\nQ: {thing}\nNo: {reason}. At most {max_words} words."
    )


def test_malformed_chat_prompts_are_clear_errors():
    text = (PROMPTS / "summarize_concepts.md").read_text()

    def parse(changed: str) -> ChatTemplate:
        return ChatTemplate.parse("summarize_concepts.md", changed, "captions", ("max_words",))

    with pytest.raises(DnDError, match=r"last '## user' turn must contain the placeholder \{captions\}; fix prompts/"):
        parse(text.replace("{captions}", "(none)"))
    with pytest.raises(
        DnDError, match=r"'## user' section: unknown placeholder\(s\) caption; allowed there: captions, max"
    ):
        parse(text.replace("Descriptions:\n1.", "{caption}\n1."))
    with pytest.raises(DnDError, match=r"'## retry' section must contain the placeholder \{reason\}"):
        parse(text.replace("{reason}", "it"))
    with pytest.raises(DnDError, match="one '## retry' section"):
        parse(text.replace("## retry", "## user"))
    with pytest.raises(DnDError, match="a section is empty"):
        parse(text.replace("## assistant\ndogs", "## assistant\n"))
    with pytest.raises(DnDError, match=r"'## system' section: .*write a literal brace as \{\{ or \}\}"):
        parse(text.replace("Several images", "Several {images"))


def test_single_prompts_hold_exactly_their_placeholder():
    assert single_prompt("s.md", "note\n## prompt\n  A {concept}.  \n", "concept") == "A {concept}."
    with pytest.raises(DnDError, match=r"'## prompt' section must contain the placeholder \{concept\}; fix prompts/s"):
        single_prompt("s.md", "note\n## prompt\nOne realistic image\n", "concept")
    with pytest.raises(DnDError, match=r"unknown placeholder\(s\) style; allowed there: concept"):
        single_prompt("s.md", "## prompt\n{style} image of {concept}\n", "concept")
    with pytest.raises(DnDError, match="expected one '## prompt' line"):
        single_prompt("s.md", "One realistic image of {concept}\n", "concept")
    with pytest.raises(DnDError, match="expected one '## prompt' line"):
        single_prompt("s.md", "## prompt\nA {concept}\n## prompt\nB {concept}\n", "concept")
    with pytest.raises(DnDError, match=r"write a literal brace as \{\{ or \}\}\); or use cosy.prompt_file$"):
        single_prompt("s.md", "## prompt\nOne {realistic image of {concept}\n", "concept", "or use cosy.prompt_file")


def test_the_placeholder_check():
    check_placeholders("p.md", "here", "{a} and {{literal}}", {"a", "b"}, "fix it", required={"a"})
    with pytest.raises(DnDError, match=r"^prompt p.md, here: unknown placeholder\(s\) c, d; allowed there: a; fix it$"):
        check_placeholders("p.md", "here", "{d} {c} {a}", {"a"}, "fix it")
    with pytest.raises(DnDError, match=r"^prompt p.md, here must contain the placeholder \{a\}, \{b\}; fix it$"):
        check_placeholders("p.md", "here", "none", {"a", "b"}, "fix it", required={"a", "b"})
    with pytest.raises(DnDError, match=r"^prompt p.md, here: Single '}' encountered"):
        check_placeholders("p.md", "here", "a } b", {"a"}, "fix it")
