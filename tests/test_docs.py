"""The README and the docs: every ``wsseg-fast`` invocation they show uses a command and flags the
parser knows (and valid choices), the README stays a front door, and nothing points outside the
repository."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from wsseg_fast.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
_PREFIXES = ("wsseg-fast", "python -m wsseg_fast")


def _code_lines(text: str) -> list[str]:
    """Lines of fenced and indented code blocks, with backslash continuations joined."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith("    "):
            lines.append(line.strip())
    joined, buffer = [], ""
    for line in lines:
        buffer += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            joined.append(buffer)
            buffer = ""
    return joined


def invocations(path: Path) -> list[list[str]]:
    """The argument lists (after the program name) of every invocation in ``path``'s code."""
    found = []
    for line in _code_lines(path.read_text()):
        for part in re.split(r"\s*(?:&&|\||;)\s*", line):
            for prefix in _PREFIXES:
                at = part.find(prefix)
                if at >= 0 and (at == 0 or part[at - 1] in " ("):
                    tokens = shlex.split(part[at + len(prefix) :], comments=True)
                    found.append([t.strip("[]") for t in tokens if t.strip("[]")])
                    break
    return found


CASES = [
    pytest.param(path, args, id=f"{path.name}:{' '.join(args[:2])}") for path in DOCS for args in invocations(path)
]


def test_the_docs_show_commands():
    assert len(CASES) >= 20, [c.id for c in CASES]


@pytest.mark.parametrize("path, args", CASES)
def test_invocation_matches_the_parser(path, args):
    subparsers = build_parser()._subparsers._group_actions[0].choices
    assert args and args[0] in subparsers, f"{path.name}: unknown command in `wsseg-fast {' '.join(args)}`"
    parser, rest = subparsers[args[0]], args[1:]
    while parser._subparsers is not None and rest and rest[0] in parser._subparsers._group_actions[0].choices:
        parser, rest = parser._subparsers._group_actions[0].choices[rest[0]], rest[1:]  # experiment demo
    options = parser._option_string_actions
    positionals = [a for a in parser._actions if not a.option_strings and a.dest != "help"]
    for i, token in enumerate(rest):
        if token.startswith("--"):
            flag, _, inline = token.partition("=")
            assert flag in options, f"{path.name}: `{args[0]}` has no flag {flag} (in `{' '.join(args)}`)"
            action = options[flag]
            value = inline or (rest[i + 1] if i + 1 < len(rest) else None)
            if action.choices is not None and value is not None and not value.isupper() and value != "...":
                assert value in action.choices, f"{path.name}: {flag} {value!r} is not one of {sorted(action.choices)}"
    for action in positionals:
        if action.choices is not None and rest and not rest[0].startswith("-"):
            assert rest[0] in action.choices, (
                f"{path.name}: `{args[0]} {rest[0]}`: expected one of {sorted(action.choices)}"
            )


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for path in DOCS:
        assert "../shared" not in path.read_text(), f"{path.name} points outside the repository"


def test_readme_links_resolve():
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" not in target:
                assert (path.parent / target).exists(), f"{path.name} links to missing {target}"


def test_readme_python_tour_runs(tmp_path, monkeypatch):
    """The README's Python block runs as written, given an image and its boxes."""
    import numpy as np

    block = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)[0]
    monkeypatch.chdir(tmp_path)
    namespace = {
        "image_rgb_uint8": np.zeros((100, 120, 3), np.uint8),
        "boxes_xyxy": np.array([[10, 10, 50, 60]], np.float32),
    }
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["masks"].masks.shape == (1, 1, 100, 120)
    assert (tmp_path / "cache").is_dir()  # the embedding went through the cache


def test_every_option_of_the_weight_free_methods_is_documented():
    """docs/real_photos.md's option table names every option of logic-refine, and grabcut's options too."""
    from wsseg_fast.pipelines.methods import METHODS

    text = (ROOT / "docs" / "real_photos.md").read_text()
    table = set(re.findall(r"^\| `(\w+)` \|", text, re.M))
    missing = set(METHODS["logic-refine"].options) - table
    assert not missing, f"docs/real_photos.md: logic-refine options without a row: {sorted(missing)}"
    for option in METHODS["grabcut"].options:
        assert f"`{option}" in text, f"docs/real_photos.md does not mention grabcut's {option}"
