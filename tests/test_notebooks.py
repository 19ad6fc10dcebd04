"""Every teaching notebook runs top to bottom (notebooks/*.py, jupytext percent format, executed with nbclient).

The notebooks assert their own claims (exact conversions, solver results equal to a hand-written loop, ...), so a
notebook whose numbers drift fails here, not only one that raises.
"""

from __future__ import annotations

import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9]*.py"))


def test_notebooks_exist():
    assert len(NOTEBOOKS) >= 4, NOTEBOOKS


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(notebook, tmp_path):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    nb = jupytext.read(notebook)
    # Run in a scratch directory so that nothing a notebook writes lands in the repository.
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
