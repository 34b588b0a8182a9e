# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Net2Net: teacher -> student vs. training from scratch
#
# The experiment of the Net2Net paper in small: train a *teacher*, grow it into a wider
# student (Net2WiderNet) and a deeper student (Net2DeeperNet), train each student and the same
# architecture from a random initialisation with the same budget, and compare test-accuracy
# curves. A student starts at the teacher's accuracy; the question is how much sooner it gets
# further than the network trained from scratch.

# %%
# Installs jnet2net (on Colab); skipped when it is already importable. PACKAGE is what pip
# installs: the release name, the repository as "git+https://...", or an uploaded wheel.
import importlib.util
import subprocess
import sys

PACKAGE = "jnet2net"
if importlib.util.find_spec("jnet2net") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", PACKAGE], check=True)

# %% [markdown]
# **Accelerator and size.** On Colab choose *Runtime > Change runtime type > GPU or TPU*: JAX
# then runs on it and the notebook trains on CIFAR-10 (downloaded by tensorflow-datasets).
# Without an accelerator, or with the environment variable `JNET2NET_SMALL=1`, the notebook
# runs in SMALL mode: tiny networks on the 8x8 handwritten digits bundled with scikit-learn,
# about a minute on a laptop CPU.

# %%
import os
import pprint

import jax
import matplotlib.pyplot as plt

import jnet2net
from jnet2net import data, train
from jnet2net.config import DataConfig, ModelSpec, RunConfig, to_dict

ACCELERATOR = jax.default_backend() in ("gpu", "tpu")
SMALL_FLAG = os.environ.get("JNET2NET_SMALL", "0" if ACCELERATOR else "1")
SMALL = SMALL_FLAG.strip().lower() in ("1", "true", "yes")
print("devices:", jax.devices())
print("SMALL mode:", SMALL)

# %% [markdown]
# **Data.** `jnet2net.data.load(name, split)` returns the whole split in memory (uint8 images,
# int labels, the channel mean and std used to normalise them). Training puts it on the
# device at once and augments there. `DataConfig` names the data set in the run's config.

# %%
if SMALL:  # 1,437 + 360 handwritten digits, 8x8x1, shipped with scikit-learn
    data_config = DataConfig(dataset="digits")
else:  # CIFAR-10, 50,000 + 10,000 images, 32x32x3, downloaded once by tensorflow-datasets
    data_config = DataConfig(dataset="cifar10", download=True)
train_set = data.load(data_config.dataset, "train", download=data_config.download)
test_set = data.load(data_config.dataset, "test", download=data_config.download)
print(train_set)
print(test_set)

# %% [markdown]
# ## 1. Train the teacher
#
# A CIFAR-style ResNet with one residual block per stage. The teacher's run is one config
# tree, `jnet2net.config.RunConfig` (the tree a config file for `jnet2net train --config`
# holds); every run below uses its training settings `run.train` (SGD with Nesterov
# momentum, cosine learning-rate schedule).

# %%
if SMALL:
    widths = (4, 8)
    train_config = train.TrainConfig(
        epochs=2, batch_size=32, learning_rate=0.05, augment="none", progress=False
    )
else:
    widths = (16, 32, 64)
    train_config = train.TrainConfig(
        epochs=10,
        batch_size=128,
        learning_rate=0.1,
        augment="crop_flip",
        compute_dtype="bfloat16",
        warmup_epochs=1,
    )
run = RunConfig(
    # the resnet20 preset with one residual block per stage
    model=ModelSpec("resnet20", {"stage_depths": (1,) * len(widths), "stage_widths": widths}),
    data=data_config,
    train=train_config,
)
pprint.pp(to_dict(run))

# %%
teacher = run.model.build(train_set.num_classes)
teacher_vars = train.init_variables(teacher, train_set.images, key=jax.random.key(0))
teacher_run = train.fit(teacher, train_set, test_set, run.train, variables=teacher_vars)
teacher_vars = teacher_run.state.variables
teacher_acc = teacher_run.history[-1]["test_acc"]
print(f"teacher test accuracy: {teacher_acc:.3f}")

# %% [markdown]
# ## 2. Grow two students
#
# `jnet2net.widen` doubles every stage's channels; `jnet2net.deepen` doubles every stage's
# blocks. Both students compute the teacher's function, so they start at its accuracy.

# %%
wider, wider_vars = jnet2net.widen(
    teacher, teacher_vars, widths=tuple(2 * w for w in widths), key=jax.random.key(1)
)
deeper, deeper_vars = jnet2net.deepen(
    teacher, teacher_vars, depths=(2,) * len(widths), key=jax.random.key(2)
)
for name, model, variables in [("wider", wider, wider_vars), ("deeper", deeper, deeper_vars)]:
    accuracy = train.evaluate(model, variables, test_set)[1]
    print(f"{name} student {model.stage_depths} x {model.stage_widths}: accuracy {accuracy:.3f}")


# %% [markdown]
# ## 3. Students vs. scratch
#
# Each network trains for the same number of epochs. `train_from` evaluates the starting point
# (step 0) and returns its records: step, test accuracy and, after each epoch, the seconds
# so far (`wall_s`).


# %%
def train_from(model, variables):
    start = {"step": 0, "test_acc": train.evaluate(model, variables, test_set)[1]}
    result = train.fit(model, train_set, test_set, run.train, variables=variables)
    return [start, *result.history]


def random_init(model, seed):
    return train.init_variables(model, train_set.images, key=jax.random.key(seed))


runs = {
    "Net2WiderNet student": train_from(wider, wider_vars),
    "wider, random init": train_from(wider, random_init(wider, 3)),
    "Net2DeeperNet student": train_from(deeper, deeper_vars),
    "deeper, random init": train_from(deeper, random_init(deeper, 4)),
}

# %% [markdown]
# ## 4. Curves and summary
#
# Test accuracy against training steps; the dashed line is the teacher. *Steps to beat
# teacher* is the first evaluated step at which a run is more accurate than the teacher.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
for ax, kind in zip(axes, ["wider", "deeper"], strict=True):
    for name, records in runs.items():
        if kind in name.lower():
            steps, accuracy = [r["step"] for r in records], [r["test_acc"] for r in records]
            ax.plot(steps, accuracy, "o-", label=name)
    ax.axhline(teacher_acc, color="gray", linestyle="--", label="teacher")
    ax.set_xlabel("training step")
    ax.legend()
axes[0].set_ylabel("test accuracy")
plt.show()

print(f"{'run':<24}{'start':>8}{'final':>8}{'steps to beat teacher':>23}")
for name, records in runs.items():
    beaten = [r["step"] for r in records if r["test_acc"] > teacher_acc]
    steps = beaten[0] if beaten else "never"
    print(f"{name:<24}{records[0]['test_acc']:>8.3f}{records[-1]['test_acc']:>8.3f}{steps:>23}")
