"""Result tables: a result CSV read as a DataFrame the same way everywhere (the public API, the book pages).

Re-exported by :mod:`conceptsim.api` and the package (``conceptsim.read_table``); it lives here, below the book and the
runner, so the book can read results without importing the API that runs studies.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def read_table(path: str | Path) -> "pd.DataFrame":
    """A result CSV as a DataFrame: empty cells are missing values, and only they.

    Concept names such as ``"none"`` or ``"NA"`` stay text (pandas would read them as missing by default).

    Parameters
    ----------
    path : str or pathlib.Path
        The CSV file.

    Returns
    -------
    pandas.DataFrame
        The table.

    Raises
    ------
    FileNotFoundError
        When the file does not exist, naming it and the stage that writes it.
    ValueError
        When the file is empty (not even a header row), naming it.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the stage that writes it first")
    # low_memory=False: a column such as similarity.csv's `represented` (True, False, or empty for the label-free
    # rows) is typed once over the whole file, not chunk by chunk (which gives mixed types and a warning)
    try:
        return pd.read_csv(path, keep_default_na=False, na_values=[""], low_memory=False)
    except pd.errors.EmptyDataError:  # pandas names no file: an emptied or truncated table
        raise ValueError(f"{path} is empty (no header row): rerun the stage that writes it (conceptsim run ... --force)") from None
