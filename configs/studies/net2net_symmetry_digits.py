"""Symmetry breaking in Net2WiderNet, reduced run on digits (CPU):
experiments/net2net/results/digits/symmetry.md.

    python experiments/run.py configs/studies/net2net_symmetry_digits.py

Same as ``python experiments/net2net/symmetry.py --dataset digits``.
"""

from experiments.study import Study


def get_config() -> Study:
    return Study("net2net.symmetry", {"dataset": "digits"})
