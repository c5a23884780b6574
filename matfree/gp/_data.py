"""The UCI protein data set (standardised, split), or generated data on request."""

from __future__ import annotations

import os
import pathlib

import numpy as np

_REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_PATH = _REPO.parent / "shared" / "data" / "protein.csv.gz"
FILENAME = "protein.csv.gz"


def default_path() -> pathlib.Path:
    """`$MATFREE_DATA/protein.csv.gz` if `MATFREE_DATA` is set, else `../shared/data/`."""
    root = os.environ.get("MATFREE_DATA")
    return pathlib.Path(root) / FILENAME if root else DEFAULT_PATH


def load_protein(
    path=None,
    *,
    n: int | None = None,
    train_fraction: float = 0.8,
    seed: int = 0,
    dtype=np.float64,
    synthetic: bool = False,
):
    """Load the protein regression data set, standardised and split.

    Reads `protein.csv.gz` (UCI "Physicochemical Properties of Protein
    Tertiary Structure": 9 features, target `RMSD`; 45,730 rows) from `path`,
    by default `$MATFREE_DATA/protein.csv.gz` or `../shared/data/` next to the
    repository. A missing file is an error (never silently replaced); pass
    `synthetic=True` to get generated data of the same shape instead (a smooth
    function of 9 inputs plus noise), e.g. for a quick run without the data.
    A random split with `seed` (optionally of a random subset of `n` rows),
    then features and target are standardised with the training split's mean
    and standard deviation.

    Parameters
    ----------
    path
        The CSV file (gzip), or `None` for the default location.
    n
        Use a random subset of `n` rows (before splitting); `None` for all.
    train_fraction
        Fraction of rows for training.
    seed
        Seed of the shuffle.
    dtype
        The NumPy dtype of the returned arrays.
    synthetic
        Generate data of the same shape instead of reading the file.

    Returns
    -------
    dict
        `X_train, y_train, X_test, y_test` (NumPy arrays), `y_std` (the
        target's training standard deviation, to convert RMSE to RMSD
        units) and `source` (the path read, or `"synthetic"`).

    Raises
    ------
    FileNotFoundError
        If the file is missing and `synthetic=False`.

    Examples
    --------
    >>> data = load_protein(n=100, synthetic=True)
    >>> data["X_train"].shape, data["X_test"].shape, data["source"]
    ((80, 9), (20, 9), 'synthetic')
    """
    rng = np.random.default_rng(seed)
    if synthetic:
        raw = _generated(45730, np.random.default_rng(12345))
        source = "synthetic"
    else:
        path = default_path() if path is None else pathlib.Path(path)
        if not path.exists():
            msg = (
                f"`path`: the protein data file was not found at {path}. Put "
                f"{FILENAME} there (UCI 'Physicochemical Properties of Protein Tertiary "
                "Structure'), set `MATFREE_DATA` to its folder, or pass "
                "`synthetic=True` for generated data of the same shape."
            )
            raise FileNotFoundError(msg)
        raw = np.loadtxt(path, delimiter=",", skiprows=1)
        source = str(path)
    idx = rng.permutation(raw.shape[0])
    if n is not None:
        idx = idx[:n]
    raw = raw[idx]
    n_train = round(train_fraction * raw.shape[0])
    X, y = raw[:, :-1], raw[:, -1]
    Xtr, Xte, ytr, yte = X[:n_train], X[n_train:], y[:n_train], y[n_train:]
    mx, sx = Xtr.mean(0), Xtr.std(0)
    sx = np.where(sx > 0, sx, 1.0)
    my, sy = ytr.mean(), ytr.std()
    return {
        "X_train": ((Xtr - mx) / sx).astype(dtype),
        "y_train": ((ytr - my) / sy).astype(dtype),
        "X_test": ((Xte - mx) / sx).astype(dtype),
        "y_test": ((yte - my) / sy).astype(dtype),
        "y_std": float(sy),
        "source": source,
    }


def _generated(n, rng):
    X = rng.normal(size=(n, 9))
    w = rng.normal(size=(9,)) / 3
    f = np.sin(X @ w) + 0.5 * np.cos(X[:, 0] * X[:, 1] / 2) + 0.3 * X[:, 2] ** 2
    return np.column_stack([X, f + 0.5 * rng.normal(size=n)])
