"""The public Python API: a study's results, running a study, and the measures on arrays you bring.

Everything here is importable from :mod:`conceptsim` itself (``conceptsim.open_results``, ...); importing
it changes nothing in your process (no environment variables, threads or allocator settings).

Results of a study that has run (``conceptsim run`` or :func:`run_study`) are read with
:func:`open_results`, which returns a read-only :class:`Results`::

    import conceptsim

    results = conceptsim.open_results("default")
    results.datasets()                                 # ['coco-icons', 'photo-colors', 'shapes']
    similarity = results.similarity("shapes")          # similarity.csv as a DataFrame
    quality = results.concept_quality("shapes", "ssd_mobilenet_v2_coco")
    findings = results.findings("shapes")              # findings.json as a dict

The measures take plain arrays: :func:`concept_similarity` (S_seg, S_cls and their variants),
:func:`concept_agreement` (agreement beyond accuracy: ``seg_kappa``, ``cls_partial``), :func:`linear_cka`
and :func:`debiased_cka`, and the probes (:func:`train_classification_probes`,
:func:`train_segmentation_probes`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conceptsim.comparison.agreement import concept_agreement
from conceptsim.comparison.cka import debiased_cka, linear_cka
from conceptsim.comparison.similarity import concept_similarity
from conceptsim.concepts.layerdata import SplitData, Standardiser
from conceptsim.concepts.net2vec import EvalSet, SegProbes, train_segmentation_probes
from conceptsim.concepts.tcav import ClsProbes, train_classification_probes
from conceptsim.paths import (
    activation_store,
    comparison_files,
    concept_quality_csv,
    concept_table_csv,
    dataset_results,
    dataset_summary_files,
    model_results,
    study_results,
)
from conceptsim.tables import read_table

if TYPE_CHECKING:
    import pandas as pd

    from conceptsim.extraction.store import ActivationStore

__all__ = [
    "Results", "open_results", "run_study", "StudyRunError",
    "concept_similarity", "concept_agreement", "linear_cka", "debiased_cka",
    "train_segmentation_probes", "SegProbes", "SplitData", "EvalSet", "Standardiser",
    "train_classification_probes", "ClsProbes",
]

CKA_METHODS = ("cka", "cka_debiased", "cka_grid4")
DISSECTION_TABLES = ("dissection", "dissection_summary", "dissection_best_unit")


class Results:
    """Read-only access to the results of one study (``results/<study>/``).

    Create it with :func:`open_results`. Nothing is computed or written: every method reads a file that
    a stage wrote (the result layout is documented in the README and in ``conceptsim.paths``).

    Parameters
    ----------
    study : str
        The study's name (``name:`` in its study file; ``NAME-smoke`` for a ``--smoke`` run).
    root : str or pathlib.Path, optional
        The results folder holding ``<study>/``; default: the project's ``results/`` (or
        ``$CONCEPTSIM_RESULTS``).

    Attributes
    ----------
    study : str
        The study's name.
    folder
        The study's results folder (a ``pathlib.Path``).
    """

    def __init__(self, study: str, root: str | Path | None = None) -> None:
        if root is not None and not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a str or pathlib.Path (a results folder), got {type(root).__name__} {root!r}")
        self.study = study
        self._root = Path(root).resolve() if root is not None else None
        self.folder = study_results(study, self._root)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"no results for study {study!r}: {self.folder} does not exist (run the study first)")

    def __repr__(self) -> str:
        return f"Results(study={self.study!r}, folder={str(self.folder)!r})"

    # ------------------------------------------------------------------ what is there
    def datasets(self) -> list[str]:
        """The datasets the study has results for.

        Returns
        -------
        list of str
            Dataset names, sorted.
        """
        return sorted(p.name for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith("_"))

    def models(self, dataset: str) -> list[str]:
        """The models with activations on ``dataset``.

        Parameters
        ----------
        dataset : str
            A dataset of :meth:`datasets`.

        Returns
        -------
        list of str
            Model names as the study writes them (``NAME``, ``NAME:random``), sorted.
        """
        from conceptsim.extraction.store import ActivationStore

        folder = self._dataset_dir(dataset)
        names = [ActivationStore(activation_store(p)).model for p in sorted(folder.iterdir())
                 if p.is_dir() and not p.name.startswith("_") and activation_store(p).is_dir()]
        return sorted(names)

    # ------------------------------------------------------------------ comparison stage (one dataset)
    def similarity(self, dataset: str) -> "pd.DataFrame":
        """Every concept's similarity for every pair of probed layers of two compared models (``similarity.csv``;
        ``conceptsim.comparison.outputs.compared_models``).

        One row per concept, method and unordered layer pair, with the columns ``concept, category,
        method, model_a, layer_a, depth_a, model_b, layer_b, depth_b, value, control, represented, n_test``
        (``represented``: the concept is represented in both layers, the rows layer-level means average; empty
        for the label-free rows); methods
        ``seg``, ``seg_kappa``, ``seg_kappa_max``, ``seg_obs_exp``, ``seg_pearson``, ``cls``, ``cls_partial``,
        ``cls_jaccard``, the concept-free CKA rows (see :meth:`cka`) and the label-free unit matching rows
        ``units_bb`` and ``units_bb_corr``. Undefined values are missing (NaN).

        Parameters
        ----------
        dataset : str
            A dataset of :meth:`datasets`.

        Returns
        -------
        pandas.DataFrame
            The table.
        """
        return read_table(self._comparison_file(dataset, "similarity"))

    def layer_similarity(self, dataset: str) -> "pd.DataFrame":
        """Concept-averaged similarity of every compared pair of probed layers (``layer_similarity.csv``).

        Columns ``method, model_a, layer_a, depth_a, model_b, layer_b, depth_b, value, control,
        n_concepts, n_test``: for a concept method, ``value`` is the mean over the concepts represented in
        both layers; CKA rows are copied from :meth:`similarity`.

        Parameters
        ----------
        dataset : str
            A dataset of :meth:`datasets`.

        Returns
        -------
        pandas.DataFrame
            The table.
        """
        return read_table(self._comparison_file(dataset, "layer_similarity"))

    def cka(self, dataset: str) -> "pd.DataFrame":
        """The concept-free baseline: CKA of every compared pair of probed layers.

        The CKA rows of :meth:`similarity` (methods ``cka``: linear CKA of global-average-pooled
        activations, ``cka_debiased``: its debiased variant, ``cka_grid4``: linear CKA of activations
        pooled to 4 x 4), without the concept columns.

        Parameters
        ----------
        dataset : str
            A dataset of :meth:`datasets`.

        Returns
        -------
        pandas.DataFrame
            Columns ``method, model_a, layer_a, depth_a, model_b, layer_b, depth_b, value, n_test``.
        """
        sim = self.similarity(dataset)
        rows = sim[sim["method"].isin(CKA_METHODS)]
        return rows.drop(columns=[c for c in ("concept", "category", "control") if c in rows]).reset_index(drop=True)

    def findings(self, dataset: str) -> dict[str, Any]:
        """The tests of the paper's two findings on ``dataset`` (``findings.json``), as parsed JSON.

        The document's schema (3) is described in ``conceptsim.comparison.document``: per model pair and
        method the finding-1 and finding-2 records (effect, 95 % interval, Holm-corrected p, verdict,
        minimum detectable effect, family), the positive control, and the selection made on val. Typed
        records of the same content: :meth:`finding_records`.

        Parameters
        ----------
        dataset : str
            A dataset of :meth:`datasets`.

        Returns
        -------
        dict
            The parsed document.
        """
        return json.loads(self._comparison_file(dataset, "findings").read_text())

    def finding_records(self, dataset: str) -> list[dict[str, Any]]:
        """The findings of ``dataset`` as typed records.

        Parameters
        ----------
        dataset : str
            A dataset of :meth:`datasets`.

        Returns
        -------
        list of dict
            One entry per trained model pair: ``{"model_a", "model_b", "family", "finding1": {method:
            Finding1}, "finding2": {method: Finding2}}`` (classes of ``conceptsim.comparison.finding1`` and
            ``conceptsim.comparison.finding2``; each test is a ``FindingTest`` with ``verdict`` and ``mde``).
        """
        from conceptsim.comparison.finding1 import Finding1
        from conceptsim.comparison.finding2 import Finding2
        from conceptsim.comparison.report import load_findings

        doc = load_findings(self.findings(dataset))
        return [{"model_a": p["model_a"], "model_b": p["model_b"], "family": p["family"],
                 "finding1": {m: Finding1.from_json(f) for m, f in p["finding1"].items()},
                 "finding2": {m: Finding2.from_json(f) for m, f in p["finding2"].items()}} for p in doc["pairs"]]

    def dataset_summary(self, dataset: str) -> "pd.DataFrame":
        """The images the study analysed on ``dataset`` (``dataset_summary.csv``): per split, per concept.

        Parameters
        ----------
        dataset : str
            A dataset of :meth:`datasets`.

        Returns
        -------
        pandas.DataFrame
            The table.
        """
        return read_table(dataset_summary_files(self._dataset_dir(dataset))[0])

    # ------------------------------------------------------------------ concept stage (one dataset and model)
    def concept_quality(self, dataset: str, model: str) -> "pd.DataFrame":
        """How well each probed layer of ``model`` represents each concept (``concept_quality.csv``).

        One row per layer, concept, method (``seg``, ``cls``) and metric, with the value, its bootstrap
        interval, the shuffled-label control, the random-init twin's value and whether the concept counts
        as ``represented``.

        Parameters
        ----------
        dataset : str
            A dataset of :meth:`datasets`.
        model : str
            A model of :meth:`models`.

        Returns
        -------
        pandas.DataFrame
            The table.
        """
        return read_table(concept_quality_csv(self._model_dir(dataset, model)))

    def dissection(self, dataset: str, model: str, table: str = "dissection") -> "pd.DataFrame":
        """The Network Dissection baseline of ``model``: single units scored against concepts.

        Parameters
        ----------
        dataset : str
            A dataset of :meth:`datasets`.
        model : str
            A model of :meth:`models`.
        table : {"dissection", "dissection_summary", "dissection_best_unit"}
            Every unit and concept, the per-layer summary, or each concept's best unit per layer.

        Returns
        -------
        pandas.DataFrame
            The table.
        """
        if table not in DISSECTION_TABLES:
            raise ValueError(f"table must be one of {DISSECTION_TABLES}, got {table!r}")
        return read_table(concept_table_csv(self._model_dir(dataset, model), table))

    # ------------------------------------------------------------------ extraction stage
    def activations(self, dataset: str, model: str) -> "ActivationStore":
        """The activation store of ``model`` on ``dataset``, opened read-only.

        The store holds, per probed layer, the activations ``N x C x h x w`` of every image (Zarr arrays,
        read lazily), and for every image its id, split, concept labels and masks.

        Parameters
        ----------
        dataset : str
            A dataset of :meth:`datasets`.
        model : str
            A model of :meth:`models`.

        Returns
        -------
        conceptsim.extraction.store.ActivationStore
            The store: ``layer_names``, ``concept_names``, ``image_ids``, ``split_index(split)``,
            ``activations(layer)`` (a read-only Zarr array; ``numpy.asarray`` reads it), ``labels``.
        """
        from conceptsim.extraction.store import ActivationStore

        return ActivationStore(activation_store(self._model_dir(dataset, model)))

    # ------------------------------------------------------------------ paths
    def _dataset_dir(self, dataset: str) -> Path:
        folder = dataset_results(self.study, dataset, self._root)
        if not folder.is_dir():
            raise KeyError(f"study {self.study!r} has no results for dataset {dataset!r} ({folder}); "
                           f"it has {self.datasets()}")
        return folder

    def _model_dir(self, dataset: str, model: str) -> Path:
        folder = model_results(self.study, dataset, model, self._root)
        if not folder.is_dir():
            raise KeyError(f"study {self.study!r} has no results for model {model!r} on {dataset!r} ({folder}); "
                           f"it has {self.models(dataset)}")
        return folder

    def _comparison_file(self, dataset: str, name: str) -> Path:
        return comparison_files(self._dataset_dir(dataset))[name]


def open_results(study: str, root: str | Path | None = None) -> Results:
    """Open the results of a study that has run, read-only.

    Parameters
    ----------
    study : str
        The study's name (``name:`` in its study file; ``NAME-smoke`` for a ``--smoke`` run).
    root : str or pathlib.Path, optional
        The results folder holding ``<study>/``; default: the project's ``results/`` (or
        ``$CONCEPTSIM_RESULTS``).

    Returns
    -------
    Results
        The study's results.

    Raises
    ------
    FileNotFoundError
        When the study has no results folder.

    Examples
    --------
    >>> results = conceptsim.open_results("default")  # doctest: +SKIP
    >>> sim = results.similarity("shapes")  # doctest: +SKIP
    >>> sim[sim["method"] == "seg"].groupby("concept")["value"].mean()  # doctest: +SKIP
    """
    return Results(study, root)


class StudyRunError(RuntimeError):
    """Some runs of a study failed (or were skipped because a run they depend on failed).

    Attributes
    ----------
    failed : list of dict
        The records of the failed runs (``id``, ``error``, ``executed_notebook``, ``log``).
    skipped : list of str
        The ids of the runs skipped because a dependency failed.
    """

    def __init__(self, study: str, failed: list[dict], skipped: list[str]) -> None:
        self.failed, self.skipped = failed, skipped
        lines = [f"{rec['id']}: {rec['error']} (log: {rec.get('log')})" for rec in failed]
        lines += [f"{rid}: skipped, a run it depends on failed" for rid in skipped]
        super().__init__(f"study {study}: {len(failed)} run(s) failed\n  " + "\n  ".join(lines))


def run_study(path: str | Path, smoke: bool = False, jobs: int = 1, force: bool = False,
              progress: bool = True) -> Results:
    """Run a study file from Python, as ``conceptsim run`` does, and open its results.

    The runs execute the stage notebooks with papermill, resumably: complete, unchanged runs are reused.
    Inputs (data, weights, device, output folders) are checked before any run starts. This prepares the
    process with :func:`conceptsim.runtime.setup` (cache folders, threads, allocator).

    Parameters
    ----------
    path : str or pathlib.Path
        The study file (YAML).
    smoke : bool, default False
        Use the study's tiny ``smoke:`` parameters (results go to ``<name>-smoke``).
    jobs : int, default 1
        Independent runs executed in parallel processes.
    force : bool, default False
        Re-run complete, unchanged runs too.
    progress : bool, default True
        Show the progress display.

    Returns
    -------
    Results
        The study's results, as :func:`open_results` opens them.

    Raises
    ------
    conceptsim.StudyError
        When the study file or its inputs are invalid (nothing has run).
    StudyRunError
        When runs failed; the others' results are kept.
    """
    from conceptsim import runtime
    from conceptsim.run import check_inputs, load_study, pending, select
    from conceptsim.run import run_study as run_all

    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a whole number >= 1, got {jobs!r}")
    runtime.setup()
    study = load_study(path, smoke=smoke)
    check_inputs(study, pending(select(study.runs(), {}), force=force))
    outcome = run_all(study, jobs=jobs, force=force, progress=progress)
    if outcome.failed or outcome.skipped_dependency:
        raise StudyRunError(study.name, outcome.failed, outcome.skipped_dependency)
    return open_results(study.name)
