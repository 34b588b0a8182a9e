"""README.md's Python blocks run, and say what they claim.

The API tour (every block but the surgery and own-module ones) runs top to bottom in one
namespace, in a temporary working directory; the surgery block is
``tests/test_readme_surgery.py``'s and the own-module block ``tests/test_readme_own_module.py``'s,
verbatim.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re

import jax.numpy as jnp
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SURGERY_TEST = ROOT / "tests" / "test_readme_surgery.py"
OWN_MODULE_TEST = ROOT / "tests" / "test_readme_own_module.py"


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def surgery_block(test: pathlib.Path = SURGERY_TEST) -> str:
    text = test.read_text()
    begin = text.index("# --- README code block begins ---\n") + len(
        "# --- README code block begins ---\n"
    )
    return text[begin : text.index("# --- README code block ends ---")]


def own_module_block() -> str:
    return surgery_block(OWN_MODULE_TEST)


@pytest.fixture(scope="module")
def blocks() -> list[str]:
    return python_blocks((ROOT / "README.md").read_text())


def test_python_blocks_are_found():
    assert python_blocks("a\n```python\nx = 1\n```\nb\n```bash\nls\n```\n") == ["x = 1\n"]


def test_the_surgery_block_is_the_tested_one(blocks):
    assert surgery_block() in blocks


def test_the_own_module_block_is_the_tested_one(blocks):
    assert own_module_block() in blocks


@pytest.fixture(scope="module")
def tour(blocks, tmp_path_factory) -> dict:
    """The namespace after running the tour blocks in order."""
    skipped = (surgery_block(), own_module_block())  # run by their own tests
    tour_blocks = [b for b in blocks if b not in skipped and "ViT(" not in b]  # test_vit
    assert len(tour_blocks) == 3, "the tour: growth, transfer, training"
    namespace: dict = {"__name__": "readme"}
    with contextlib.chdir(tmp_path_factory.mktemp("readme")):
        for block in tour_blocks:
            exec(compile(block, "README.md", "exec"), namespace)
        namespace["cwd_files"] = sorted(os.listdir("runs"))
    return namespace


def test_growth_block_preserves_the_function(tour):
    errors = tour["jnet2net"].output_error(
        tour["model"], tour["variables"], tour["deep"], tour["deep_vars"], tour["xs"]
    )
    assert float(jnp.max(errors)) < 1e-5
    assert tour["deep"].stage_depths == (2, 3) and tour["deep"].stage_widths == (12, 24)


def test_transfer_block_reports_what_its_comment_says(tour):
    report = tour["report"]
    assert f"{report.reused_fraction:.1%}" == "94.9%"
    assert report.function_preserving is False


def test_training_block_learns_saves_and_scales_down(tour):
    assert tour["run"].history[-1]["epoch"] == 8
    assert tour["run"].history[-1]["test_acc"] > 0.5
    assert tour["cwd_files"] == ["student"]
    summary = tour["result"].summary
    assert summary["epochs"] == 8
    assert summary["flops_saved"] == pytest.approx(1.0 - summary["flops_ratio"])
    assert 0.0 <= summary["flops_saved"] < 1.0
