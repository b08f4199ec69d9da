"""The README's architecture map matches the tree: every folder and module of ``rlhf_rewards/`` is named under
its folder, and every folder or ``*.py`` the map names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rlhf_rewards"
DESCRIPTION_COLUMN = 20  # a map line indented this far continues the entry above it


def _map_entries() -> dict[str, str]:
    """``folder path (relative to the package) -> the text of its entry`` ('' is the package itself)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Architecture") : readme.index("<!-- /section:architecture -->")]
    block = section[section.index("```\nrlhf_rewards/") + 4 :]
    block = block[: block.index("```")]
    entries: dict[str, str] = {"": ""}
    current: list[str] = [""]
    for line in block.splitlines()[1:]:
        indent = len(line) - len(line.lstrip())
        if not line.strip():
            continue
        if indent >= DESCRIPTION_COLUMN:
            for key in current:
                entries[key] += " " + line.strip()
            continue
        level = indent // 2  # 2 spaces per folder level below rlhf_rewards/
        names, _, text = line.strip().partition("  ")
        if names.endswith(".py"):
            current = [""]
            entries[""] += f" {names} {text}"
            continue
        # A level-2 folder (server/base/) sits in the last level-1 folder named before it.
        parent = [] if level == 1 else [[k for k in entries if k and "/" not in k][-1]]
        current = ["/".join([*parent, n.rstrip("/")]) for n in names.split() if n.endswith("/")]
        for key in current:
            entries[key] = text
    return entries


def _words(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z_0-9]+(?:\.py)?", text))


def test_every_folder_and_module_is_on_the_map():
    entries = _map_entries()
    folders = {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*")
        if p.is_dir() and (p / "__init__.py").exists() and "__pycache__" not in p.parts
    }
    folders.add("")
    folders = {"" if f == "." else f for f in folders}
    assert sorted(folders - set(entries)) == [], "folders missing from the README's architecture map"
    assert sorted(set(entries) - folders) == [], "folders on the README's map that do not exist"
    missing = []
    for folder in folders:
        words = _words(entries[folder])
        for module in sorted((PACKAGE / folder).glob("*.py")):
            if module.name != "__init__.py" and module.name not in words and module.stem not in words:
                missing.append(f"{folder or '.'}/{module.name}")
    assert missing == [], "modules missing from their folder's entry on the README's architecture map"


def test_every_module_the_map_names_exists():
    entries = _map_entries()
    absent = [
        f"{folder or '.'}/{word}"
        for folder, text in entries.items()
        for word in _words(text)
        if word.endswith(".py") and not (PACKAGE / folder / word).exists()
    ]
    assert absent == []
