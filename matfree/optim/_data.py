"""LIBSVM's a9a classification data set, or generated data on explicit request."""

from __future__ import annotations

import gzip
import os
import pathlib

import numpy as np

_REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_FOLDER = _REPO.parent / "shared" / "data"
FILES = ("a9a.gz", "a9a.t.gz")
NUM_FEATURES = 123
SIZES = (32561, 16281)


def load_a9a(path=None, *, n: int | None = None, dtype=np.float64, synthetic: bool = False):
    """Load the a9a binary classification data set (LIBSVM's UCI Adult).

    Reads `a9a.gz` (32,561 training rows) and `a9a.t.gz` (16,281 test rows)
    from the folder `path`, by default `$MATFREE_DATA` or `../shared/data/`
    next to the repository: labels in `{-1, +1}`, 123 binary features. A
    missing file is an error (never silently replaced); pass `synthetic=True`
    for generated data of the same shape instead (sparse binary features and
    labels from a logistic model), e.g. for a quick run without the data.

    Parameters
    ----------
    path
        The folder holding both files, or `None` for the default location.
    n
        Keep only the first `n` training and the first `n // 2` test rows.
    dtype
        The NumPy dtype of the returned arrays.
    synthetic
        Generate data of the same shape instead of reading the files.

    Returns
    -------
    dict
        `X_train (m, 123)`, `y_train (m,)`, `X_test`, `y_test` (NumPy
        arrays, labels `-1.0`/`+1.0`) and `source` (the folder read, or
        `"synthetic"`).

    Raises
    ------
    FileNotFoundError
        If a file is missing and `synthetic=False`.

    Examples
    --------
    >>> data = load_a9a(n=100, synthetic=True)
    >>> data["X_train"].shape, data["X_test"].shape, data["source"]
    ((100, 123), (50, 123), 'synthetic')
    """
    if synthetic:
        rng = np.random.default_rng(12345)
        m_train, m_test = SIZES if n is None else (n, n // 2)
        X, y = _generated(m_train + m_test, rng)
        Xtr, ytr, Xte, yte = X[:m_train], y[:m_train], X[m_train:], y[m_train:]
        source = "synthetic"
    else:
        root = os.environ.get("MATFREE_DATA")
        folder = pathlib.Path(path or root or DEFAULT_FOLDER)
        for name in FILES:
            if not (folder / name).exists():
                msg = (
                    f"`path`: the a9a data file was not found at {folder / name}. Put "
                    f"{FILES[0]} and {FILES[1]} (LIBSVM's 'a9a') there, set "
                    "`MATFREE_DATA` to their folder, or pass `synthetic=True` for "
                    "generated data of the same shape."
                )
                raise FileNotFoundError(msg)
        Xtr, ytr = _read(folder / FILES[0], n)
        Xte, yte = _read(folder / FILES[1], None if n is None else n // 2)
        source = str(folder)
    return {
        "X_train": Xtr.astype(dtype),
        "y_train": ytr.astype(dtype),
        "X_test": Xte.astype(dtype),
        "y_test": yte.astype(dtype),
        "source": source,
    }


def _read(path, n):
    """Parse LIBSVM sparse text (`label index:value ...`, 1-based indices) to dense."""
    with gzip.open(path, "rt") as file:
        lines = [line for line in file if line.strip()]
    if n is not None:
        lines = lines[:n]
    X = np.zeros((len(lines), NUM_FEATURES))
    y = np.empty(len(lines))
    for i, line in enumerate(lines):
        label, *pairs = line.split()
        y[i] = float(label)
        for pair in pairs:
            j, value = pair.split(":")
            X[i, int(j) - 1] = float(value)
    return X, y


def _generated(n, rng):
    X = (rng.random((n, NUM_FEATURES)) < 0.11).astype(float)  # ~14 ones per row
    w = rng.normal(size=NUM_FEATURES)
    logits = X @ w - 1.0
    y = np.where(rng.random(n) < 1 / (1 + np.exp(-logits)), 1.0, -1.0)
    return X, y
