"""Weight reuse against random init, reduced run on digits (CPU):
experiments/weight_reuse/results/digits.

    python experiments/run.py configs/studies/weight_reuse_digits.py

Same as ``python experiments/weight_reuse/run.py --dataset digits``.
"""

from experiments.study import Study


def get_config() -> Study:
    return Study("weight_reuse", {"dataset": "digits"})
