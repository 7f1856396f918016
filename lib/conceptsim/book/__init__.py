"""The book's code: the one place that writes pages, figures for pages and the table of contents.

:func:`publish` (the runner calls it after a study) writes a study's generated pages and its part of the table
of contents, then the table of contents itself.

- :mod:`~conceptsim.book.pages` -- :func:`publish`: the pages of one study, from its result files;
- :mod:`~conceptsim.book.toc` -- ``book/_generated/_toc.yml`` from the base toc and every study's part
  (``make book``: ``python -m conceptsim.book.toc``);
- :mod:`~conceptsim.book.reporting` -- the reproducibility record, the per-dataset index pages, the titles
  of the executed notebooks and the label on their parameters cell;
- :mod:`~conceptsim.book.findings` -- the Findings page (its tables, shared with notebook 04, are
  :mod:`conceptsim.comparison.report`; its figures :mod:`conceptsim.comparison.figures`);
- :mod:`~conceptsim.book.grounding` -- the page on whether the measures measure;
- :mod:`~conceptsim.book.coco_icons` -- the coco-icons dataset page's figures and power check (run by hand:
  ``python -m conceptsim.book.coco_icons``);
- :mod:`~conceptsim.book.assets` -- MathJax, fetched by ``make setup`` and served locally.

The Performance page is written by ``benchmarks/report.py``: it presents the benchmark harness's own
``results.json`` (targets and verdicts from ``benchmarks/common.py``), which the library neither writes nor reads.
"""



def publish(study):
    """Write the generated pages of ``study`` (a :class:`conceptsim.run.study.Study`) and the table of contents;
    see :func:`conceptsim.book.pages.publish`. (Imported on call, so that ``python -m conceptsim.book.toc``
    and the other entry points of the package load only what they use.)"""
    from conceptsim.book.pages import publish as publish_pages

    return publish_pages(study)
