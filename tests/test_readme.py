"""The README's "Your own model and data" section: every model spec field is documented, and its example,
run as written in a new shell (network cut), works and says where its results went.

The example runs in a temporary project root (sources symlinked, ``conftest.make_project``; weights from the
real cache) and its study folder ``/tmp/my-study`` is replaced by a temporary folder: nothing else in the
example is changed. Running it is slow (a few minutes: a small study of 8 runs)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_project

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Your own model and data"


def section_text() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:end if end > 0 else None]


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def test_every_model_spec_field_and_preprocessing_field_is_documented_with_an_example():
    from conceptsim.models.user_models import KIND_KEYS, PREPROCESSING_FIELDS

    text = section_text()
    table = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z_]+)[:` ].*$", text, flags=re.M)}
    for key in sorted(set().union(*KIND_KEYS.values())):
        row = table.get(key) or next((r for r in table.values() if f"`{key}:" in r), None)
        assert row is not None, f"README: spec field {key!r} has no row in the model spec table"
        assert row.rstrip().rstrip("|").rsplit("|", 1)[1].strip(), f"README: spec field {key!r} has no example"
    for key in PREPROCESSING_FIELDS:
        assert f"`{key}" in text, f"README: preprocessing field {key!r} is not documented"
    assert "`size: [H,\nW]`" in text or "`size: [H, W]`" in text
    for key in ("concepts", "concept_categories", "max_images"):
        assert f"| `{key}` |" in text, f"README: dataset field {key!r} has no row"


def test_a_builder_preprocessing_size_that_is_one_number_names_the_field(tmp_path):
    from conceptsim.models.user_models import UserModelError, check_preprocessing

    with pytest.raises(UserModelError, match=r"preprocessing 'size' must be \[H, W\].*got 128"):
        check_preprocessing({"size": 128}, "python builder 'mynet:build'")
    with pytest.raises(UserModelError, match="unknown key 'sise'"):
        check_preprocessing({"sise": [1, 2]}, "python builder 'mynet:build'")
    assert check_preprocessing({"size": [96, 128], "resize": "letterbox"}, "x") == {"size": [96, 128], "resize": "letterbox"}


def test_the_example_is_one_shell_block_that_starts_from_the_venv():
    blocks = bash_blocks(section_text())
    assert len(blocks) == 1
    first = blocks[0].splitlines()[0]
    assert first.startswith("source .venv/bin/activate"), "a new shell has neither python nor conceptsim on its PATH"


@pytest.mark.slow
def test_readme_example_runs_as_written_in_a_new_shell(tmp_path):
    project = make_project(tmp_path / "project")
    (project / ".venv").symlink_to(Path(sys.executable).parents[1])
    study_dir = tmp_path / "my-study"
    script = bash_blocks(section_text())[0].replace("/tmp/my-study", str(study_dir))
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p) != Path(venv_bin))
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONCEPTSIM_RESULTS")}
    env.update(PATH=path, CONCEPTSIM_ROOT=str(project),  # a checkout finds its root by itself; this one is a copy
               CONCEPTSIM_CACHE=os.environ.get("CONCEPTSIM_CACHE", str(REPO / ".cache")))
    proc = subprocess.run(["bash", "-e", "-c", script], cwd=project, env=env, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = proc.stdout
    assert "study my-study: 8 run(s) executed, 0 reused" in out
    assert f"results:            {project / 'results' / 'my-study'}" in out
    assert f"executed notebooks: {project / 'book' / 'results' / 'my-study'}" in out
    assert f"make -C {project} book" in out
    findings = project / "results" / "my-study" / "my_data" / "findings.json"
    assert findings.is_file()
    executed = sorted((project / "book" / "results" / "my-study").rglob("*.ipynb"))
    assert len(executed) == 8


def test_run_ends_naming_results_notebooks_and_the_publish_command(tmp_path, monkeypatch):
    from conceptsim.cli import where_results_are
    from conceptsim.run.study import parse_study

    monkeypatch.setenv("CONCEPTSIM_ROOT", str(tmp_path))
    monkeypatch.setenv("CONCEPTSIM_RESULTS", str(tmp_path / "results"))
    study = parse_study({"name": "mine", "datasets": {"shapes": {}}, "models": ["mobilenet_v2_imagenet"]})
    text = where_results_are(study, complete=True)
    assert f"results:            {tmp_path / 'results' / 'mine'}" in text
    assert f"executed notebooks: {tmp_path / 'book' / 'results' / 'mine'}" in text
    assert f"make -C {tmp_path} book   (then open {tmp_path / '_build' / 'html' / 'index.html'})" in text
    assert "BOOK_ALL" not in text
    assert f"make -C {tmp_path} book BOOK_ALL=1" in where_results_are(study, complete=False)  # a rehearsal
