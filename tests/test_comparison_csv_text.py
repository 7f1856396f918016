"""The comparison stage's CSV text (:func:`conceptsim.comparison.stage.csv_text`) is pandas' ``to_csv`` text."""

from __future__ import annotations

import numpy as np
import pandas as pd

from conceptsim.comparison.stage import csv_text, write_csv


def edge_frame(rows: int = 500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    value = rng.standard_normal(rows).round(8)
    value[::7] = np.nan
    value[1::11] = -0.0  # prints apart from 0.0
    value[2::13] = 0.0
    value[3::17] = 1e-05
    value[4::19] = 123456789.0
    return pd.DataFrame({
        "concept": rng.choice(["red", "sky blue", "none", "NA", ""], rows).astype(object),
        "method": pd.Series(rng.choice(["seg", "cls"], rows), dtype="string"),
        "depth": rng.choice([0.0, 0.125, 1 / 3, np.nan], rows),
        "value": value,
        "n_test": np.full(rows, 120, dtype=np.int64),
        "n_concepts": pd.array(np.where(rng.random(rows) < 0.2, None, rng.integers(0, 9, rows)), dtype="Int64"),
    })


def test_csv_text_is_the_pandas_text_byte_for_byte():
    df = edge_frame()
    assert csv_text(df) == df.to_csv(index=False)
    assert csv_text(df.iloc[:0]) == df.iloc[:0].to_csv(index=False)  # header only


def test_csv_text_leaves_quoted_fields_and_other_dtypes_to_pandas():
    df = edge_frame(20)
    df.loc[3, "concept"] = "red, dark"  # pandas quotes it
    assert csv_text(df) is None
    assert csv_text(edge_frame(20).assign(flag=True)) is None  # a boolean column


def test_write_csv_rounds_and_writes_the_pandas_bytes(tmp_path):
    df = edge_frame()
    df["value"] = df["value"] + 1e-11  # rounded away at 8 decimals
    write_csv(tmp_path / "t.csv", df)
    want = df.assign(value=df["value"].round(8), depth=df["depth"].round(8)).to_csv(index=False)
    assert (tmp_path / "t.csv").read_text() == want
    df.loc[0, "concept"] = 'say "hi"'  # the pandas path
    write_csv(tmp_path / "q.csv", df)
    assert (tmp_path / "q.csv").read_text() == df.assign(value=df["value"].round(8), depth=df["depth"].round(8)).to_csv(index=False)


def test_csv_text_prints_categorical_columns_and_merged_neighbours_as_pandas():
    df = edge_frame(2000, seed=3)
    df["concept"] = pd.Categorical(df["concept"], categories=["unused", "red", "sky blue", "none", "NA", ""])
    df.loc[5, "concept"] = np.nan  # a missing categorical cell (code -1) prints empty
    df.insert(1, "model", pd.Categorical.from_codes(np.arange(2000) % 3, ["ssd", "centernet", "pixels"]))
    from conceptsim.comparison.stage import _column_codes, _joined_columns

    columns = [_column_codes(df[c]) for c in df.columns]
    assert len(_joined_columns(columns, len(df))) < len(columns)  # the few-valued neighbours were joined
    assert csv_text(df) == df.to_csv(index=False)
    df["model"] = df["model"].cat.rename_categories({"pixels": "a,b"})
    assert csv_text(df) is None  # a category pandas would quote
