"""The Python API and library pages (``book/api.md``, ``book/library.md``) and the README's command synopsis
say what the code does: every documented name imports from ``conceptsim``, the examples run as written, and
the command-line summaries list every option of ``conceptsim COMMAND --help``."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

import conceptsim
from conceptsim.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def test_every_name_the_api_page_documents_is_importable_from_conceptsim():
    # the page said "everything below is importable from conceptsim", yet documented conceptsim.api.read_table
    # and conceptsim.run.study.StudyError, which were not
    text = (REPO / "book" / "api.md").read_text()
    targets = re.findall(r"^\.\. auto\w+:: conceptsim\.([\w.]+)$", text, flags=re.M)
    modules = {t.split(".")[0] for t in targets if t.split(".")[0] not in conceptsim.__all__}
    assert modules == {"runtime"}, f"book/api.md documents names outside conceptsim's API: {sorted(modules)}"
    assert "the module `conceptsim.runtime`" in text  # named as a module of its own
    for target in targets:
        if target.split(".")[0] not in modules:
            obj = conceptsim
            for part in target.split("."):
                obj = getattr(obj, part)


def test_read_table_and_study_error_are_part_of_the_api():
    from conceptsim import StudyError, read_table
    from conceptsim.run.study import StudyError as study_error
    from conceptsim.tables import read_table as tables_read_table

    assert read_table is tables_read_table and StudyError is study_error
    assert {"read_table", "StudyError"} <= set(conceptsim.__all__) & set(dir(conceptsim))


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def test_the_library_page_example_runs_as_written(monkeypatch):
    # its `conceptsim.linear_cka(features_a, features_b)` once used names the example never defined
    from unittest import mock

    monkeypatch.setattr(conceptsim, "open_results", lambda study: mock.MagicMock(name=f"results of {study}"),
                        raising=False)
    (block,) = python_blocks(REPO / "book" / "library.md")
    assert "linear_cka" in block
    exec(compile(block, "book/library.md", "exec"), {})  # a study's results stubbed; the measure on real arrays


def synopsis(path: Path) -> dict[tuple[str, str], str]:
    """The commands of the first ``text`` block of ``path`` that lists ``conceptsim run``: (command, subcommand
    or "") -> the command's text, its indented continuation lines included and comments left out."""
    block = next(b for b in re.findall(r"^```text\n(.*?)^```", path.read_text(), flags=re.S | re.M)
                 if "conceptsim run" in b)
    entries: dict[tuple[str, str], str] = {}
    keys: list[tuple[str, str]] = []
    for line in block.splitlines():
        if line.startswith("conceptsim "):  # `conceptsim models layers|inspect ...` is two commands
            words = line.split()
            keys = [(words[1], sub) for sub in (words[2].split("|") if words[1] in ("models", "data") else [""])]
        for key in keys if line.startswith(("conceptsim ", " ")) else []:
            entries[key] = entries.get(key, "") + " " + line.split("#")[0]
    return entries


def leaf_commands() -> dict[tuple[str, str], list[str]]:
    """Every command of the parser: (command, subcommand or "") -> its long options, from ``--help``."""
    def subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        action = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)
        return dict(action.choices) if action else {}

    out = {}
    for name, p in subparsers(build_parser()).items():
        for sub, leaf in (subparsers(p) or {"": p}).items():
            out[(name, sub)] = [o for a in leaf._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
    return out


def test_the_library_page_lists_every_command_and_option():
    # it once omitted run --root and --twins-only, models inspect, data build's --smoke, --overwrite, --styles,
    # --categories, and the data summary command
    entries = synopsis(REPO / "book" / "library.md")
    for command, options in leaf_commands().items():
        assert command in entries, f"book/library.md: no line for `conceptsim {' '.join(command)}`"
        missing = [o for o in options if o not in entries[command]]
        assert not missing, f"book/library.md: `conceptsim {' '.join(command)}` lacks {missing}"


@pytest.mark.parametrize("command", [("data", "summary")])
def test_the_readme_synopsis_lists_every_option_of(command):
    # the README's `data summary` line once lacked --root, and that NAME may be an annotation file
    entry = synopsis(REPO / "README.md")[command]
    missing = [o for o in leaf_commands()[command] if o not in entry]
    assert not missing and "ANNOTATIONS.json" in entry, f"README: `conceptsim {' '.join(command)}` lacks {missing}"
