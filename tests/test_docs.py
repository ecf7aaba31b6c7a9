"""The README's layout paragraph and docs/architecture.md name every module of the package, so neither drifts from
the code."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dnd"


def modules() -> list[str]:
    """Top-level modules and packages (``layout.py``, ``backends/``), and every stage and backend module."""
    top = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    top += [f"{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()]
    nested = [p.name for folder in ("stages", "backends") for p in (PACKAGE / folder).glob("*.py")]
    return sorted(top) + sorted(name for name in nested if name != "__init__.py")


def test_the_architecture_page_names_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = [name for name in modules() if not re.search(rf"(?<![\w/]){re.escape(name)}", text)]
    assert not missing, f"docs/architecture.md does not mention {missing}"


def test_the_readme_layout_names_every_top_level_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("Layout (") :]
    top = [name for name in modules() if "/" in name or (PACKAGE / name).is_file()]
    missing = [name for name in top if f"dnd/{name}" not in layout and f"`{name}`" not in layout]
    assert not missing, f"the README's layout paragraph does not mention {missing}"
