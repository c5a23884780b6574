"""The demo and every notebook run end to end at small size."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))


def _run(args, tmp_path, timeout=600):
    env = dict(
        os.environ,
        MATFREE_SMALL="1",
        MATFREE_FIGURES=str(tmp_path),
        JAX_DISABLE_MOST_OPTIMIZATIONS="1",
        MPLBACKEND="Agg",
        PYTHONWARNINGS="ignore",
        # The checkout under test, not whichever matfree the venv points at
        # (a git worktree shares the venv of the main checkout).
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_demo_runs_and_saves_a_figure(tmp_path):
    out = _run(
        [str(ROOT / "examples" / "demo.py"), "--small", "--out", "demo.png"], tmp_path
    )
    assert (tmp_path / "demo.png").stat().st_size > 1000
    assert "saved" in out


def test_spectral_demo_runs_and_saves_a_figure(tmp_path):
    out = _run(
        [str(ROOT / "examples" / "spectral_demo.py"), "--small", "--out", "spectral.png"],
        tmp_path,
    )
    assert (tmp_path / "spectral.png").stat().st_size > 1000
    assert "saved" in out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_at_small_size(path, tmp_path):
    _run([str(path)], tmp_path)
    assert list(tmp_path.glob("*.png")), "the notebook saved no figure"
