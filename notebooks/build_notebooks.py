"""Writes the Colab notebooks of this folder from their sources, kept as code.

Each notebook is a Python file in jupytext's percent format, ``NN_name.py`` (``# %%`` starts a
code cell, ``# %% [markdown]`` a text cell): ruff checks it and a review reads it as code. Run
``python notebooks/build_notebooks.py`` after editing one; it writes ``NN_name.ipynb`` beside
it, without outputs and with Colab's metadata. ``tests/test_notebooks.py`` checks that the two
agree and executes each notebook in SMALL mode.
"""

from __future__ import annotations

import pathlib

import jupytext
import nbformat

HERE = pathlib.Path(__file__).resolve().parent

#: ``{notebook file name: its jupytext source}``.
NOTEBOOKS = {path.with_suffix(".ipynb").name: path for path in sorted(HERE.glob("[0-9]*.py"))}

#: What Colab reads: open on a GPU runtime, a Python 3 kernel.
METADATA = {
    "accelerator": "GPU",
    "colab": {"provenance": []},
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


def build(source: pathlib.Path) -> nbformat.NotebookNode:
    """The notebook of a jupytext percent-format ``source``, without outputs."""
    notebook = jupytext.read(source)
    notebook.metadata = dict(METADATA)
    for index, cell in enumerate(notebook.cells):
        cell.id = f"cell-{index:02d}"
        cell.metadata = {}
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.validate(notebook)
    return notebook


def main() -> None:
    """Writes every notebook next to its source."""
    for name, source in NOTEBOOKS.items():
        nbformat.write(build(source), HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
