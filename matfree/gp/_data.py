"""The UCI protein data set (standardised, split), with a generated fallback."""

from __future__ import annotations

import pathlib

import numpy as np

_REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_PATH = _REPO.parent / "shared" / "data" / "protein.csv.gz"


def load_protein(
    path=None,
    *,
    n: int | None = None,
    train_fraction: float = 0.8,
    seed: int = 0,
    dtype=np.float64,
):
    """Load the protein regression data set, standardised and split.

    Reads `protein.csv.gz` (UCI "Physicochemical Properties of Protein
    Tertiary Structure": 9 features, target `RMSD`; 45,730 rows) from `path`,
    by default `../shared/data/` next to the repository. If the file is
    absent, generates a data set of the same shape (a smooth function of 9
    inputs plus noise) so that scripts still run. A random split with `seed`
    (optionally of a random subset of `n` rows), then features and target
    are standardised with the training split's mean and standard deviation.

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

    Returns
    -------
    dict
        `X_train, y_train, X_test, y_test` (NumPy arrays), `y_std` (the
        target's training standard deviation, to convert RMSE to RMSD
        units) and `source` (the path read, or `"generated"`).

    Examples
    --------
    >>> data = load_protein(n=100)
    >>> data["X_train"].shape, data["X_test"].shape
    ((80, 9), (20, 9))
    """
    path = DEFAULT_PATH if path is None else pathlib.Path(path)
    rng = np.random.default_rng(seed)
    if path.exists():
        raw = np.loadtxt(path, delimiter=",", skiprows=1)
        source = str(path)
    else:
        raw = _generated(45730, np.random.default_rng(12345))
        source = "generated"
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
