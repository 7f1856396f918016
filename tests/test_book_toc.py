"""The table of contents from the studies' toc parts: pages that exist, real studies first, rehearsals on request."""

import shutil
from pathlib import Path

import yaml

from conceptsim.book import toc

ROOT = Path(__file__).resolve().parents[1]


def write_part(root: Path, study: str, **keys) -> None:
    out = root / "book" / "results" / study
    (out / "shapes").mkdir(parents=True)
    (out / "shapes" / "index.md").write_text("# shapes\n")
    (out / "reproducibility.md").write_text("# r\n")
    part = {"study": study, "chapters": [{"file": f"book/results/{study}/shapes/index", "title": "Dataset shapes",
                                          "sections": [{"file": f"book/results/{study}/shapes/gone"}]}],
            "reproducibility": f"book/results/{study}/reproducibility", "findings": None, "grounding": None, **keys}
    (out / toc.TOC_PART).write_text(yaml.safe_dump(part))


def test_toc_lists_existing_pages_real_studies_first_and_rehearsals_on_request(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSIM_ROOT", str(tmp_path))
    monkeypatch.delenv("CONCEPTSIM_BOOK_ALL", raising=False)
    shutil.copy(ROOT / "_toc.yml", tmp_path / "_toc.yml")
    write_part(tmp_path, "a-smoke")  # an old part without the keys: smoke by its name
    write_part(tmp_path, "b", smoke=False, complete=False)
    write_part(tmp_path, "c", smoke=False, complete=True)

    def parts() -> list[dict]:
        return yaml.safe_load((tmp_path / "book" / "_generated" / "_toc.yml").read_text())["parts"]

    assert toc.write_toc() == tmp_path / "book" / "_generated" / "_toc.yml"
    assert [p["caption"] for p in parts() if "study '" in p["caption"]] == ["Executed notebooks: study 'c'"]
    assert parts()[-1]["chapters"][0]["sections"] == []  # a page that is not there is left out
    reproducibility = next(ch for p in parts() for ch in p.get("chapters", []) if ch.get("file") == "book/reproducibility")
    assert reproducibility["sections"] == [{"file": "book/results/c/reproducibility"}]
    monkeypatch.setenv("CONCEPTSIM_BOOK_ALL", "yes")
    toc.write_toc()
    assert [p["caption"] for p in parts()][-3:] == ["Executed notebooks: study 'c'", "Rehearsal (smoke study): 'a-smoke'",
                                                    "Rehearsal (incomplete study): 'b'"]
    toc.write_toc(rehearsals=False)
    assert "a-smoke" not in (tmp_path / "book" / "_generated" / "_toc.yml").read_text()
