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
# # Training-time scale-down (Learn&Drop)
#
# Early stages of a CNN settle long before training ends. Scale-down freezes a growing prefix
# of stages (never the last stage or the head) so that the run's training FLOPs come to a
# target fraction of full training's. The frozen prefix needs no backward pass and no
# optimizer state; in `cache` mode even its forward pass is computed once and its outputs are
# reused. Fewer FLOPs per step, shorter epochs.
#
# We train a ResNet with `jnet2net.scale_down.fit_scale_down`, look at each epoch's cut,
# FLOPs and time, and compare with ordinary training for the same number of epochs.

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

from jnet2net import data, scale_down, train
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
# ## 1. Scale-down settings
#
# Cuts sit at stage boundaries. Before training, every candidate cut's step is compiled and its
# FLOPs read from the executable; the freezes are then placed `min_spacing` apart, none before
# `not_before`, as late as `target_compute` (training FLOPs over full training's) allows. Every
# `check_every` steps a stage whose relative update is below `ready_ratio` times the median of
# the deeper stages' may freeze earlier. Until then the stages that may freeze train at
# `lr_boost` times the learning rate (3 is the CPU protocol's recipe: it gains about 2 points
# there); a freezing stage's learning rate ramps to zero over `ramp`, and its BatchNorm
# statistics are recalibrated. `mode='cache'` stores the frozen
# prefix's outputs (without random crops; mirror images with `cache_augment='flip'`),
# `'nograd'` recomputes them every step with the usual augmentation.
#
# The run is one config tree, `jnet2net.config.RunConfig`: the network, the data, the
# training settings and the scale-down settings, the tree a config file for
# `jnet2net train --config` holds.

# %%
if SMALL:
    run = RunConfig(
        model=ModelSpec("resnet20", {"stage_depths": (2, 2), "stage_widths": (8, 16)}),
        data=data_config,
        train=train.TrainConfig(
            epochs=4, batch_size=32, learning_rate=0.05, augment="none", progress=False
        ),
        scale_down=scale_down.ScaleDownConfig(
            target_compute=0.85, check_every=5, mode="cache", cache_augment="none"
        ),
    )
else:
    run = RunConfig(
        model=ModelSpec("resnet20"),
        data=data_config,
        train=train.TrainConfig(
            epochs=15,
            batch_size=128,
            learning_rate=0.1,
            augment="crop_flip",
            compute_dtype="bfloat16",
            warmup_epochs=1,
        ),
        scale_down=scale_down.ScaleDownConfig(target_compute=0.65, lr_boost=3.0, mode="cache"),
    )
pprint.pp(to_dict(run))

# %%
model = run.model.build(train_set.num_classes)
print("layers:", model.layer_names())
print("candidate cuts:", scale_down.candidate_cuts(model, run.scale_down.max_stages))

# %% [markdown]
# ## 2. Train with scale-down
#
# Each epoch record says how many layers were frozen (`cut`, counted from the input), the
# FLOPs of one step in use (from XLA's cost analysis of its executable), this epoch's FLOPs
# against full training's, and the time.

# %%
result = scale_down.fit_scale_down(model, train_set, test_set, run.train, run.scale_down)

print(f"{'epoch':>5}{'cut':>5}{'step MFLOP':>12}{'FLOPs vs full':>15}{'time s':>8}{'test acc':>10}")
for r in result.history:
    print(
        f"{r['epoch']:>5}{r['cut']:>5}{r['step_flops'] / 1e6:>12.2f}"
        f"{r['epoch_flops'] / r['full_epoch_flops']:>15.1%}"
        f"{r['epoch_s']:>8.2f}{r['test_acc']:>10.3f}"
    )
print("deadlines:", result.summary["deadlines"], "freezes:", result.summary["freeze_steps"])
for event in result.summary["events"]:
    print(f"step {event['step']}: froze {event['layers']} (early: {event['early']})")

# %% [markdown]
# ## 3. Against full training
#
# The same network and config trained the usual way for as many epochs. The summary of the
# scale-down run gives the training FLOPs saved (cache builds and recalibrations included), its
# time, and the seconds spent compiling every candidate cut's step before training: in SMALL
# mode, where an epoch takes well under a second, those compiles outweigh the saving; on
# CIFAR-10 with an accelerator the shorter steps of the later epochs win.

# %%
full = train.fit(model, train_set, test_set, run.train)
summary = result.summary
print(f"frozen at the end:     {summary['frozen']}")
print(f"training FLOPs saved:  {summary['flops_saved']:.1%}")
print(f"time, full training:   {sum(r['epoch_s'] for r in full.history):.1f} s")
print(
    f"time, scale-down:      {summary['train_s']:.1f} s, of which {summary['move_s']:.1f} s "
    f"freezing (recalibration, caches); {summary['compile_s']:.1f} s compiling before"
)
print(
    f"test accuracy:         {summary['test_acc']:.3f} scale-down, "
    f"{full.history[-1]['test_acc']:.3f} full training"
)

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
epochs = [r["epoch"] for r in result.history]
left.bar(epochs, [r["epoch_flops"] / r["full_epoch_flops"] for r in result.history])
left.set(xlabel="epoch", ylabel="training FLOPs vs. full", ylim=(0, 1.05))
right.plot(epochs, [r["test_acc"] for r in result.history], "o-", label="scale-down")
right.plot(epochs, [r["test_acc"] for r in full.history], "o-", label="full training")
right.set(xlabel="epoch", ylabel="test accuracy")
right.legend()
plt.show()
