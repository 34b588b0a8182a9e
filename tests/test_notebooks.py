"""Every notebook in ``notebooks/`` runs top to bottom in SMALL mode (CPU, bundled digits).

Deselect with ``-m "not notebooks"``. Each notebook runs in a fresh ``python3`` kernel of
this interpreter, in a temporary working directory.
"""

from __future__ import annotations

import importlib.util
import pathlib
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
BUILD_SCRIPT = NOTEBOOK_DIR / "build_notebooks.py"
CELL_TIMEOUT_S = 300


def load_build_script():
    """``notebooks/build_notebooks.py`` as a module (the notebooks folder is no package)."""
    spec = importlib.util.spec_from_file_location("build_notebooks", BUILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_notebooks = load_build_script()


#: The kernel's environment: SMALL mode, CPU, fast compiles, never a download.
KERNEL_ENV = {
    "JNET2NET_SMALL": "1",
    "JAX_PLATFORMS": "cpu",
    "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
    "TFDS_DATA_DIR": "/nonexistent-jnet2net-tests",
    "MPLBACKEND": "Agg",
    "CI": "1",
}


def test_every_notebook_comes_from_the_build_script():
    assert [path.name for path in NOTEBOOKS] == sorted(build_notebooks.NOTEBOOKS)


@pytest.mark.parametrize("name", sorted(build_notebooks.NOTEBOOKS))
def test_notebook_matches_build_script(name):
    on_disk = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    built = build_notebooks.build(build_notebooks.NOTEBOOKS[name])
    sources = [(cell.cell_type, cell.source) for cell in on_disk.cells]
    assert sources == [(cell.cell_type, cell.source) for cell in built.cells], (
        f"{name} differs from {build_notebooks.NOTEBOOKS[name].name}: run python "
        "notebooks/build_notebooks.py"
    )
    for cell in on_disk.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name} has outputs"


@pytest.mark.parametrize("name", sorted(build_notebooks.NOTEBOOKS))
def test_notebook_installs_the_package_only_when_missing(name):
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    first = next(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert 'if importlib.util.find_spec("jnet2net") is None:' in first
    install = '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", PACKAGE], check='
    assert 'PACKAGE = "jnet2net"' in first and install in first
    assert any("JNET2NET_SMALL" in cell.source for cell in notebook.cells)


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_in_small_mode(path, tmp_path, monkeypatch):
    notebook = nbformat.read(path, as_version=4)
    for key, value in KERNEL_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # one CPU device, as on a laptop
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


def test_the_shared_cells_are_the_same_in_every_notebook():
    """Each notebook stands alone (Colab opens one file), so the install cell and the text
    on accelerators are written in each source; they must not drift apart."""
    first_cells = []
    for name in sorted(build_notebooks.NOTEBOOKS):
        cells = nbformat.read(NOTEBOOK_DIR / name, as_version=4).cells
        install = next(c.source for c in cells if c.cell_type == "code")
        accelerator = next(c.source for c in cells if c.source.startswith("**Accelerator"))
        first_cells.append((install, accelerator))
    assert len(set(first_cells)) == 1, "the install or accelerator cells differ"
