"""Tabular data from a CSV file (``dlfast train --csv FILE --target COLUMN``), read with the
standard library's ``csv`` module.

The first line names the columns. A value is missing when empty or one of ``NA``, ``N/A``,
``NaN``, ``null``, ``None``, ``?`` (any case). A column is numeric when every value present
parses as a finite float, else categorical. The rows are split into training, validation and test
rows first (stratified by class for classification); then everything learnt from the data is
learnt from the training rows only:

* numeric columns: standardised, ``(v - mean) / std`` (std 0: ``v - mean``);
* categorical columns: one-hot over the categories of the training rows, in sorted order (a
  category seen only in other rows: all zeros);
* missing values: a ``ValueError`` naming the column and the row, or with ``impute`` ("mean",
  "median", "most-frequent") filled from the training rows (categorical columns: always the most
  frequent category);
* the target: classification labels are the sorted distinct values of the column (all rows);
  regression targets are standardised like a numeric column (losses are in those units; R^2 is
  unchanged). A missing target is an error.
"""
from __future__ import annotations

import csv
import math

import numpy as np

__all__ = ["MISSING", "IMPUTE", "Table", "read_csv"]

MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})
IMPUTE = ("mean", "median", "most-frequent")


def _missing(v):
    return v.strip().lower() in MISSING


def _float(v):
    try:
        f = float(v)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


class Table:
    """A CSV file's columns: ``names``, ``columns`` (name -> list of str, one per row),
    ``lines`` (the file line of each row), ``path``."""

    def __init__(self, path, names, columns, lines):
        self.path, self.names, self.columns, self.lines = path, names, columns, lines

    @property
    def n(self):
        return len(self.lines)

    def numeric(self, name):
        """True when every value present in the column is a finite float."""
        return all(_missing(v) or _float(v) is not None for v in self.columns[name])

    def where(self, name, row):
        return f"row {row + 1} (line {self.lines[row]} of {self.path})"


def read_csv(path):
    """The ``Table`` of a UTF-8 CSV file (a leading byte-order mark, as spreadsheets write it,
    is dropped) with a header line (ValueError naming the line when a row has another number of
    fields, or the file when it is not UTF-8)."""
    try:
        return _read_csv(path)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as "
                         f"UTF-8 CSV") from None


def _read_csv(path):
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path} is empty (expected a header line naming the columns)") \
                from None
        names = [h.strip() for h in header]
        if len(set(names)) != len(names) or any(not h for h in names):
            raise ValueError(f"{path}: the header must name every column once, got {names}")
        cols = {h: [] for h in names}
        lines = []
        for row in reader:
            if not row or all(not v.strip() for v in row):
                continue                                        # blank line
            if len(row) != len(names):
                raise ValueError(f"{path}, line {reader.line_num}: {len(row)} fields, but the "
                                 f"header names {len(names)} columns")
            for h, v in zip(names, row):
                cols[h].append(v.strip())
            lines.append(reader.line_num)
    if not lines:
        raise ValueError(f"{path} has a header but no rows")
    return Table(path, names, cols, lines)


def task_of(table, target):
    """"classify" when the target column is non-numeric or holds integers only with at most 20
    distinct values, else "regress"."""
    vals = [v for v in table.columns[target] if not _missing(v)]
    if not table.numeric(target):
        return "classify"
    nums = {float(v) for v in vals}
    return "classify" if all(x.is_integer() for x in nums) and len(nums) <= 20 else "regress"


class Preprocess:
    """Features and targets of a ``Table``, fitted on the training rows (see the module doc).
    ``state()`` is a JSON-friendly record of everything fitted."""

    def __init__(self, table, target, task, impute=None):
        if target not in table.columns:
            raise ValueError(f"--target {target!r} is not a column of {table.path}; columns: "
                             f"{', '.join(table.names)}")
        if impute is not None and impute not in IMPUTE:
            raise ValueError(f"impute must be one of {IMPUTE}, got {impute!r}")
        self.table, self.target, self.task, self.impute = table, target, task, impute
        self.features = [h for h in table.names if h != target]
        if not self.features:
            raise ValueError(f"{table.path} has no column besides the target {target!r}")
        self.kinds = {h: "numeric" if table.numeric(h) else "categorical" for h in self.features}
        col = table.columns[target]
        for r, v in enumerate(col):
            if _missing(v):
                raise ValueError(f"the target column {target!r} is missing a value in "
                                 f"{table.where(target, r)}; rows without a target cannot be "
                                 f"used (remove them)")
        if task == "classify":
            numeric = table.numeric(target)
            keys = sorted({float(v) if numeric else v for v in col})
            self.classes = [int(k) if numeric and float(k).is_integer() else k for k in keys]
            if len(keys) < 2:
                raise ValueError(f"--task classify needs at least 2 classes in the target "
                                 f"column {target!r}; it holds only {self.classes[0]!r}")
            index = {k: i for i, k in enumerate(keys)}
            self.labels = np.array([index[float(v) if numeric else v] for v in col], np.int64)
        else:
            bad = next((r for r, v in enumerate(col) if _float(v) is None), None)
            if bad is not None:
                raise ValueError(f"--task regress needs a numeric target; column {target!r} has "
                                 f"{col[bad]!r} in {table.where(target, bad)}")
            self.classes = None
            self.labels = np.array([float(v) for v in col])
        if impute is None:
            for h in self.features:
                r = next((r for r, v in enumerate(table.columns[h]) if _missing(v)), None)
                if r is not None:
                    raise ValueError(f"column {h!r} is missing a value in {table.where(h, r)}; "
                                     f"fill it in, or impute the training rows' "
                                     f"{'/'.join(IMPUTE)} with --impute")

    def fit(self, rows):
        """Learn the statistics of the training ``rows`` (indices)."""
        t = self.table
        self.stats = {}
        for h in self.features:
            vals = [t.columns[h][r] for r in rows if not _missing(t.columns[h][r])]
            if not vals:
                raise ValueError(f"column {h!r} has no value in the training rows")
            if self.kinds[h] == "numeric":
                x = np.array([float(v) for v in vals])
                fill = {"mean": float(x.mean()), "median": float(np.median(x)), None: 0.0}.get(
                    self.impute)
                if self.impute == "most-frequent":
                    u, c = np.unique(x, return_counts=True)
                    fill = float(u[np.argmax(c)])
                full = np.array([float(v) if not _missing(v) else fill
                                 for v in (t.columns[h][r] for r in rows)])
                mean, std = float(full.mean()), float(full.std())
                self.stats[h] = {"mean": mean, "std": std if std > 0 else 1.0, "fill": fill}
            else:
                cats, counts = np.unique(np.array(vals, dtype=object).astype(str),
                                         return_counts=True)
                self.stats[h] = {"categories": cats.tolist(),
                                 "fill": str(cats[np.argmax(counts)])}
        if self.task == "regress":
            y = self.labels[rows]
            std = float(y.std())
            self.y_scale = (float(y.mean()), std if std > 0 else 1.0)
        return self

    @property
    def width(self):
        return sum(1 if self.kinds[h] == "numeric" else len(self.stats[h]["categories"])
                   for h in self.features)

    def transform(self, rows, dtype):
        """(x (len(rows), width) of dtype, targets): int64 labels or standardised values."""
        t = self.table
        x = np.zeros((len(rows), self.width), dtype)
        j = 0
        for h in self.features:
            st, col = self.stats[h], t.columns[h]
            if self.kinds[h] == "numeric":
                v = np.array([st["fill"] if _missing(col[r]) else float(col[r]) for r in rows])
                x[:, j] = (v - st["mean"]) / st["std"]
                j += 1
            else:
                index = {c: i for i, c in enumerate(st["categories"])}
                for i, r in enumerate(rows):
                    k = index.get(st["fill"] if _missing(col[r]) else col[r])
                    if k is not None:
                        x[i, j + k] = 1.0
                j += len(st["categories"])
        if self.task == "classify":
            return x, self.labels[rows]
        m, s = self.y_scale
        return x, ((self.labels[rows] - m) / s).astype(dtype)

    def state(self):
        return {"target": self.target, "task": self.task, "impute": self.impute,
                "features": [{"name": h, "kind": self.kinds[h], **self.stats[h]}
                             for h in self.features],
                "classes": self.classes,
                "target_scale": list(self.y_scale) if self.task == "regress" else None}
