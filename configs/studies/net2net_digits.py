"""Net2Net students against scratch and random-pad students, reduced run on digits (CPU):
experiments/net2net/results/digits.

    python experiments/run.py configs/studies/net2net_digits.py

Same as ``python experiments/net2net/run.py --dataset digits``.
"""

from experiments.study import Study


def get_config() -> Study:
    return Study("net2net", {"dataset": "digits"})
