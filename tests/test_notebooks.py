"""Every notebook in ``notebooks/`` runs top to bottom in SMALL mode (CPU, bundled digits).

Deselect with ``-m "not notebooks"``. Each notebook runs in a fresh ``python3`` kernel of
this interpreter, in a temporary working directory.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300

sys.path.insert(0, str(NOTEBOOK_DIR))
import build_notebooks  # noqa: E402

sys.path.remove(str(NOTEBOOK_DIR))


def kernel_env() -> dict[str, str]:
    """The kernel's environment: SMALL mode, CPU, one device, fast compiles, no download."""
    env = dict(os.environ)
    env.update(
        JNET2NET_SMALL="1",
        JAX_PLATFORMS="cpu",
        JAX_DISABLE_MOST_OPTIMIZATIONS="1",
        TFDS_DATA_DIR="/nonexistent-jnet2net-tests",
        MPLBACKEND="Agg",
        CI="1",
    )
    env.pop("XLA_FLAGS", None)  # one CPU device: batches need not split over fake devices
    return env


def test_notebooks_are_found():
    names = {path.name for path in NOTEBOOKS}
    assert set(build_notebooks.NOTEBOOKS) <= names, sorted(names)


@pytest.mark.parametrize("name", sorted(build_notebooks.NOTEBOOKS))
def test_notebook_matches_build_script(name):
    on_disk = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    built = build_notebooks.build(build_notebooks.NOTEBOOKS[name])
    sources = [(cell.cell_type, cell.source) for cell in on_disk.cells]
    assert sources == [(cell.cell_type, cell.source) for cell in built.cells], (
        f"{name} is stale: run python notebooks/build_notebooks.py"
    )
    for cell in on_disk.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name} has outputs"


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_in_small_mode(path, tmp_path, monkeypatch):
    notebook = nbformat.read(path, as_version=4)
    for key, value in kernel_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    start = time.perf_counter()
    client.execute(cwd=str(tmp_path))
    seconds = time.perf_counter() - start
    print(f"{path.name}: {seconds:.1f} s")
    outputs = [
        output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    ]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "SMALL mode: True" in text
    assert not [o for o in outputs if o.output_type == "error"]
