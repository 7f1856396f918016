"""A study's generated pages: :func:`publish`, which the runner calls after a study, writes them all and the
study's part of the table of contents, then the table of contents itself (:mod:`conceptsim.book.toc`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from conceptsim.atomic import write_text
from conceptsim.book import reporting
from conceptsim.book.findings import write_findings_page
from conceptsim.book.grounding import write_grounding_page
from conceptsim.book.toc import TOC_PART, write_toc
from conceptsim.paths import book_results_dir, executed_path, load_records, project_root

if TYPE_CHECKING:
    from conceptsim.run.study import Study


def _rel(path: Path) -> str:
    return str(path.relative_to(project_root()).with_suffix(""))


def publish(study: "Study") -> Path:
    """Write the study's generated pages and its part of the table of contents, then ``book/_generated/_toc.yml``
    (the base toc plus every study that has executed notebooks, see :func:`conceptsim.book.toc.write_toc`)."""
    out_dir = book_results_dir(study.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = {r["id"]: r for r in load_records(study.name) if r.get("status") == "ok"}
    runs = [r for r in study.runs() if r.id in records and executed_path(r).exists()]
    reporting.write_reproducibility_page(study, [records[r.id] for r in runs], out_dir / "reproducibility.md")
    findings_page = write_findings_page(study, out_dir / "findings.md")
    grounding_page = write_grounding_page(study, out_dir / "grounding.md")
    chapters = []
    for ds in study.datasets:
        ds_runs = [r for r in runs if r.dataset == ds]
        if not ds_runs:
            continue
        index = out_dir / ds / "index.md"
        write_text(index, reporting.dataset_index(study, ds, ds_runs))
        chapters.append({"file": _rel(index), "title": f"Dataset {ds}",
                         "sections": [{"file": _rel(executed_path(r)), "title": reporting.page_title(r, study.model_specs)}
                                      for r in ds_runs]})
    part = {"study": study.name, "chapters": chapters, "reproducibility": _rel(out_dir / "reproducibility.md"),
            "findings": _rel(findings_page) if findings_page is not None else None,
            "grounding": _rel(grounding_page) if grounding_page is not None else None,
            # a rehearsal (listed only with BOOK_ALL=1): a smoke study, or one not every run of which is complete
            "smoke": bool(study.smoke), "complete": len(runs) == len(study.runs())}
    write_text(out_dir / TOC_PART, yaml.safe_dump(part, sort_keys=False))
    return write_toc()
