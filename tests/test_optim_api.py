"""`matfree.optim`: the public vocabulary (as in test_conventions.py) and `load_a9a`."""

import gzip
import inspect

import numpy as np
import pytest

from matfree import optim
from matfree.optim import _data

KEYWORD_ONLY = ("throw", "gradient", "depth", "batched", "key", "rank", "shift")


@pytest.mark.parametrize("name", optim.__all__)
def test_public_names_follow_the_conventions(name):
    obj = getattr(optim, name)
    if inspect.isfunction(obj):
        params = inspect.signature(obj).parameters
        for p in params.values():
            if p.name in KEYWORD_ONLY:
                assert p.kind is p.KEYWORD_ONLY, f"{name}: `{p.name}` must be keyword-only"
        # Factories return optax transformations, not results: no `throw`.
        assert "throw" not in params
    else:
        assert issubclass(obj, tuple) and "status" not in obj._fields[:1]
        assert "count" in obj._fields and "num_curvature" in obj._fields


def test_load_a9a_missing_file_is_an_error_not_synthetic_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="`path`: the a9a data file was not found"):
        optim.load_a9a(tmp_path)


def test_load_a9a_synthetic_on_request():
    data = optim.load_a9a(n=200, synthetic=True, dtype=np.float32)
    assert data["source"] == "synthetic"
    assert data["X_train"].shape == (200, 123) and data["X_test"].shape == (100, 123)
    assert data["X_train"].dtype == np.float32
    assert set(np.unique(data["y_train"])) == {-1.0, 1.0}


def test_load_a9a_parses_libsvm_text(tmp_path):
    for name, text in zip(
        _data.FILES, ("+1 1:1 123:1\n-1 5:1\n", "-1 2:1 3:1\n+1 1:1\n"), strict=True
    ):
        with gzip.open(tmp_path / name, "wt") as file:
            file.write(text)
    data = optim.load_a9a(tmp_path)
    assert data["X_train"].shape == (2, 123) and data["X_test"].shape == (2, 123)
    assert data["X_train"][0, [0, 122]].tolist() == [1.0, 1.0]
    assert data["X_train"].sum() == 3.0 and data["y_train"].tolist() == [1.0, -1.0]
    assert data["source"] == str(tmp_path)


@pytest.mark.skipif(not (_data.DEFAULT_FOLDER / "a9a.gz").exists(), reason="no a9a data")
def test_load_a9a_real_data_shapes():
    data = optim.load_a9a(n=500)
    assert data["X_train"].shape == (500, 123) and data["X_test"].shape == (250, 123)
