"""Where the project keeps its caches and results, and the environment that keeps $HOME clean."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The repository root (the folder holding ``pyproject.toml``), or ``$CONCEPTSIM_ROOT``."""
    env = os.environ.get("CONCEPTSIM_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").exists() and (parent / "lib" / "conceptsim").is_dir():
            return parent
    return Path.cwd().resolve()


def cache_dir() -> Path:
    """Git-ignored cache: weights, tool config dirs. ``$CONCEPTSIM_CACHE`` overrides."""
    env = os.environ.get("CONCEPTSIM_CACHE")
    return Path(env).resolve() if env else project_root() / ".cache"


def weights_dir() -> Path:
    return cache_dir() / "weights"


def datasets_dir() -> Path:
    """Where built or fetched datasets live (``$CONCEPTSIM_DATA`` overrides)."""
    env = os.environ.get("CONCEPTSIM_DATA")
    return Path(env).resolve() if env else cache_dir() / "datasets"


def results_dir() -> Path:
    env = os.environ.get("CONCEPTSIM_RESULTS")
    return Path(env).resolve() if env else project_root() / "results"


def model_dir_name(model: str) -> str:
    """Folder name of a model's results: ``NAME:random`` is written ``NAME__random``."""
    return model.replace(":", "__")


def configure_environment() -> None:
    """Point ultralytics, matplotlib and Jupyter config dirs into the cache; keep ultralytics offline.

    Values already set by the user win (``setdefault``).
    """
    cache = cache_dir()
    defaults = {
        "YOLO_CONFIG_DIR": cache / "ultralytics",
        "MPLCONFIGDIR": cache / "matplotlib",
        "JUPYTER_CONFIG_DIR": cache / "jupyter" / "config",
        "JUPYTER_DATA_DIR": cache / "jupyter" / "data",
        "JUPYTER_RUNTIME_DIR": cache / "jupyter" / "runtime",
        "IPYTHONDIR": cache / "ipython",
        "TORCH_HOME": cache / "torch",
    }
    for key, value in defaults.items():
        if key not in os.environ:
            os.environ[key] = str(value)
            Path(value).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    os.environ.setdefault("YOLO_VERBOSE", "False")
