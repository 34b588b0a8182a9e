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
# # Weight reuse between similar architectures
#
# Net2Net grows a network into a strict superset of itself. `jnet2net.transfer` is more
# general: it maps the weights of a trained network onto *any* similar network of the same
# family, deeper or shallower, wider or narrower, and reports what every destination weight
# got. When the destination is a superset (deeper and wider only) the function is preserved
# exactly; otherwise the report lists each approximation (dropped blocks, folded channels).
#
# We train a source ResNet, transfer it to four neighbours, and train each one briefly from
# the reused weights and from a random initialisation.

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
import numpy as np

import jnet2net
from jnet2net import data, models, train
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
# ## 1. Train the source network
#
# A CIFAR-style ResNet with two residual blocks per stage. Its run is one config tree,
# `jnet2net.config.RunConfig` (the tree a config file for `jnet2net train --config` holds).

# %%
if SMALL:
    widths = (8, 12)
    train_config = train.TrainConfig(
        epochs=2, batch_size=32, learning_rate=0.05, augment="none", progress=False
    )
else:
    widths = (32, 64, 128)
    train_config = train.TrainConfig(
        epochs=10,
        batch_size=128,
        learning_rate=0.1,
        augment="crop_flip",
        compute_dtype="bfloat16",
        warmup_epochs=1,
    )
stages = len(widths)
run = RunConfig(
    # the resnet20 preset with two residual blocks per stage
    model=ModelSpec("resnet20", {"stage_depths": (2,) * stages, "stage_widths": widths}),
    data=data_config,
    train=train_config,
)
pprint.pp(to_dict(run))

# %%
source = run.model.build(train_set.num_classes)
source_run = train.fit(source, train_set, test_set, run.train)
source_vars = source_run.state.variables
print(f"source test accuracy: {source_run.history[-1]['test_acc']:.3f}")

# %% [markdown]
# ## 2. Transfer to four neighbours
#
# Deeper stages get the source blocks spread over them plus new blocks that start as
# identities; shallower stages keep evenly spaced source blocks. Wider layers replicate
# channels (as Net2WiderNet); narrower layers keep the channels with the largest weights and
# fold each dropped channel into its most similar kept one.

# %%
wider_widths = (12, 16) if SMALL else (48, 96, 192)
narrower_widths = (4, 8) if SMALL else (16, 32, 64)
destinations = {
    "deeper": models.ResNet(stage_depths=(3,) * stages, stage_widths=widths),
    "shallower": models.ResNet(stage_depths=(1,) * stages, stage_widths=widths),
    "wider": models.ResNet(stage_depths=(2,) * stages, stage_widths=wider_widths),
    "narrower": models.ResNet(stage_depths=(2,) * stages, stage_widths=narrower_widths),
}
reports, reused = {}, {}
for name, model in destinations.items():
    reused[name], report = jnet2net.transfer(source, source_vars, model, key=jax.random.key(1))
    reports[name] = report
    print(
        f"{name:<10} depths {model.stage_depths} widths {model.stage_widths}: "
        f"{report.reused_fraction:.0%} of the parameters from the source, "
        f"function-preserving: {report.function_preserving}"
    )

# %% [markdown]
# **The reuse report.** One row per destination leaf: `exact` (copied), `transformed`
# (computed from source weights: replicated, split, folded), `partial` (part source, part new)
# or `fresh` (new: identity blocks, fresh init), with where it came from; then totals and the
# approximations that change the function. Here is the report of the narrower network.

# %%
print(reports["narrower"])

# %% [markdown]
# ## 3. Train briefly: reused weights vs. random initialisation
#
# Each destination trains for one epoch from its reused weights and from a random
# initialisation. Accuracy is measured before (step 0) and after.

# %%
brief = run.train.replace(epochs=1)
results = {}
for name, model in destinations.items():
    random_vars = train.init_variables(model, train_set.images, key=jax.random.key(2))
    for start, variables in [("reuse", reused[name]), ("random", random_vars)]:
        before = train.evaluate(model, variables, test_set)[1]
        after = train.fit(model, train_set, test_set, brief, variables=variables)
        results[name, start] = (before, after.history[-1]["test_acc"])

print(f"{'network':<10}{'reuse: start':>14}{'after':>8}{'random: start':>15}{'after':>8}")
for name in destinations:
    (r0, r1), (s0, s1) = results[name, "reuse"], results[name, "random"]
    print(f"{name:<10}{r0:>14.3f}{r1:>8.3f}{s0:>15.3f}{s1:>8.3f}")

# %%
names = list(destinations)
x = np.arange(len(names))
for offset, start in [(-0.2, "reuse"), (0.2, "random")]:
    accuracy = [results[name, start][1] for name in names]
    plt.bar(x + offset, accuracy, width=0.4, label=f"from {start}")
plt.xticks(x, names)
plt.ylabel("test accuracy after one epoch")
plt.legend()
plt.show()
