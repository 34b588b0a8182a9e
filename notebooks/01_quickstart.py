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
# # jnet2net quickstart
#
# [Net2Net](https://arxiv.org/abs/1511.05641) grows a trained network into a larger one that
# computes *exactly the same function*, so training continues from where the small network
# stopped instead of from scratch. In this notebook we
#
# 1. build a small ResNet and train it briefly,
# 2. make it wider (`jnet2net.widen`) and deeper (`jnet2net.deepen`),
# 3. check with `jnet2net.output_error` (both networks run over a stack of batches with
#    `jax.vmap`) that the outputs did not change,
# 4. train the grown network a few more steps.

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
import jax.numpy as jnp

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
# ## 1. Build a ResNet and train it briefly
#
# The run is one config tree, `jnet2net.config.RunConfig`: the network (`ModelSpec`: a preset
# and field overrides), the data and the training settings (`train.TrainConfig`), the tree a
# config file for `jnet2net train --config` holds. `to_dict` shows it as JSON values.

# %%
if SMALL:
    widths = (4, 8)
    train_config = train.TrainConfig(
        epochs=2, batch_size=32, learning_rate=0.05, augment="none", progress=False
    )
else:
    widths = (16, 32, 64)
    train_config = train.TrainConfig(
        epochs=3,
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

# %% [markdown]
# `run.model.build` gives a `models.ResNet`, a Flax module whose fields *are* the
# architecture: blocks per stage and channels per stage. `model.init` gives its variables
# (`params` and BatchNorm `batch_stats`). `train.fit` trains it with SGD on the whole dataset
# on device and evaluates it after every epoch.

# %%
model = run.model.build(train_set.num_classes)
example = jnp.zeros((1, *train_set.image_shape))
variables = model.init(jax.random.key(0), example, train=False)
print("layers:", model.layer_names())
print("parameters:", sum(x.size for x in jax.tree.leaves(variables["params"])))

# %%
result = train.fit(model, train_set, test_set, run.train, variables=variables)
for record in result.history:
    print(f"epoch {record['epoch']}: test accuracy {record['test_acc']:.3f}")
variables = result.state.variables

# %% [markdown]
# ## 2. Widen and deepen
#
# `jnet2net.widen` copies randomly chosen channels of each stage (Net2WiderNet) and divides
# the weights that read them, so the sum is unchanged; a small zero-sum noise breaks the
# symmetry between the copies without changing the function. `jnet2net.deepen` adds residual
# blocks whose last BatchNorm scale is zero (Net2DeeperNet for ResNets): a new block adds
# nothing until training moves it. Both return a new module and new variables; the old ones
# are untouched.

# %%
wide_model, wide_vars = jnet2net.widen(
    model, variables, widths=tuple(2 * w for w in widths), key=jax.random.key(1)
)
deep_model, deep_vars = jnet2net.deepen(
    wide_model, wide_vars, depths=(2,) * len(widths), key=jax.random.key(2)
)
print("teacher:", model.stage_depths, model.stage_widths)
print("grown:  ", deep_model.stage_depths, deep_model.stage_widths)
print("parameters:", sum(x.size for x in jax.tree.leaves(deep_vars["params"])))

# %% [markdown]
# ## 3. Check that the function is preserved
#
# `jnet2net.output_error(model_a, vars_a, model_b, vars_b, xs)` runs both networks over a
# stack of batches `xs` of shape `(n_batches, batch, h, w, c)` with `jax.vmap` and returns,
# per batch, `max |a - b| / max |a|`. In float32 it stays far below `1e-5`, in evaluation mode
# and in training mode (BatchNorm on batch statistics) alike.

# %%
xs = jax.random.normal(jax.random.key(3), (4, 16, *train_set.image_shape))
print("eval mode: ", jnet2net.output_error(model, variables, deep_model, deep_vars, xs))
print("train mode:", jnet2net.output_error(model, variables, deep_model, deep_vars, xs, train=True))
print("test accuracy before growing:", train.evaluate(model, variables, test_set)[1])
print("test accuracy after growing: ", train.evaluate(deep_model, deep_vars, test_set)[1])

# %% [markdown]
# ## 4. Keep training the grown network
#
# The grown variables go to `train.fit` like any others; training starts from the small
# network's accuracy.

# %%
result = train.fit(deep_model, train_set, test_set, run.train, variables=deep_vars)
for record in result.history:
    print(f"epoch {record['epoch']}: test accuracy {record['test_acc']:.3f}")

# %% [markdown]
# ## 5. Vision transformers grow the same way
#
# `models.ViT` is a pre-LayerNorm transformer over 4x4 patches. `widen` grows its MLP units,
# its heads (each keeps its width) and its embedding width (only by a whole multiple: the
# LayerNorms normalise over the residual stream, so every unit is copied the same number of
# times); `deepen` appends blocks whose residual outputs are zero. The grown transformer
# computes the trained one's function and keeps training from there.

# %%
embed, mlp = (16, 32) if SMALL else (96, 192)
vit = models.ViT(patch_size=4, embed_dim=embed, depth=2, num_heads=2, mlp_dim=mlp)
vit_vars = vit.init(jax.random.key(5), jnp.zeros((1, *train_set.image_shape)), train=False)
vit_vars = train.fit(vit, train_set, test_set, run.train, variables=vit_vars).state.variables
sizes = dict(embed_dim=2 * embed, num_heads=4, mlp_dim=2 * mlp)
big_vit, big_vars = jnet2net.widen(vit, vit_vars, key=jax.random.key(6), noise="fresh", **sizes)
big_vit, big_vars = jnet2net.deepen(big_vit, big_vars, depth=4, key=jax.random.key(7))
print(f"grown ViT: embed {big_vit.embed_dim}, {big_vit.depth} blocks, {big_vit.num_heads} heads")
print("output error:", jnet2net.output_error(vit, vit_vars, big_vit, big_vars, xs).max())
before = train.evaluate(vit, vit_vars, test_set)[1]
after = train.evaluate(big_vit, big_vars, test_set)[1]
print(f"test accuracy before / after growing: {before:.3f} / {after:.3f}")
