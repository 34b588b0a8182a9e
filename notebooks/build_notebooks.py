"""Writes the Colab notebooks of this folder from the cell texts below.

Run ``python notebooks/build_notebooks.py`` after editing a cell; the notebooks are written
without outputs. ``tests/test_notebooks.py`` executes each one in SMALL mode.
"""

from __future__ import annotations

import pathlib
import textwrap

import nbformat

HERE = pathlib.Path(__file__).resolve().parent

# --- cells shared by every notebook ---------------------------------------------------------

INSTALL = """\
# Installs jnet2net (on Colab); skipped when it is already importable. PACKAGE is what pip
# installs: the release name, the repository as "git+https://...", or an uploaded wheel.
import importlib.util

PACKAGE = "jnet2net"
if importlib.util.find_spec("jnet2net") is None:
    %pip install -q {PACKAGE}
"""

SETUP_MD = """\
**Accelerator and size.** On Colab choose *Runtime > Change runtime type > GPU or TPU*: JAX
then runs on it and the notebook trains on CIFAR-10 (downloaded by tensorflow-datasets).
Without an accelerator, or with the environment variable `JNET2NET_SMALL=1`, the notebook
runs in SMALL mode: tiny networks on the 8x8 handwritten digits bundled with scikit-learn,
about a minute on a laptop CPU.
"""


def setup(third_party: str, ours: str) -> str:
    """The setup cell: imports, accelerator check and the SMALL switch."""
    return f"""\
import os

import jax
{third_party.strip()}

{ours.strip()}

ACCELERATOR = jax.default_backend() in ("gpu", "tpu")
SMALL_FLAG = os.environ.get("JNET2NET_SMALL", "0" if ACCELERATOR else "1")
SMALL = SMALL_FLAG.strip().lower() in ("1", "true", "yes")
print("devices:", jax.devices())
print("SMALL mode:", SMALL)
"""


DATA_MD = """\
**Data.** `jnet2net.data.load(name, split)` returns the whole split in memory (uint8 images,
int labels, the channel mean and std used to normalise them). Training puts it on the
device at once and augments there.
"""

DATA = """\
if SMALL:  # 1,437 + 360 handwritten digits, 8x8x1, shipped with scikit-learn
    train_set = data.load("digits", "train")
    test_set = data.load("digits", "test")
else:  # CIFAR-10, 50,000 + 10,000 images, 32x32x3, downloaded once by tensorflow-datasets
    train_set = data.load("cifar10", "train", download=True)
    test_set = data.load("cifar10", "test", download=True)
print(train_set)
print(test_set)
"""

CONFIG = """\
if SMALL:
    config = train.TrainConfig(
        epochs={small_epochs}, batch_size=32, learning_rate=0.05, augment="none", progress=False
    )
else:
    config = train.TrainConfig(
        epochs={epochs},
        batch_size=128,
        learning_rate=0.1,
        augment="crop_flip",
        compute_dtype="bfloat16",
        warmup_epochs=1,
    )
print(config)
"""


def config(small_epochs: int, epochs: int) -> str:
    """The training-config cell (SMALL: digits, batch 32; else CIFAR-10, batch 128, bf16)."""
    return CONFIG.format(small_epochs=small_epochs, epochs=epochs)


# --- 01 quickstart ---------------------------------------------------------------------------

QUICKSTART = [
    (
        "md",
        """\
# jnet2net quickstart

[Net2Net](https://arxiv.org/abs/1511.05641) grows a trained network into a larger one that
computes *exactly the same function*, so training continues from where the small network
stopped instead of from scratch. In this notebook we

1. build a small ResNet and train it briefly,
2. make it wider (`jnet2net.widen`) and deeper (`jnet2net.deepen`),
3. check with `jnet2net.output_error` (both networks run over a stack of batches with
   `jax.vmap`) that the outputs did not change,
4. train the grown network a few more steps.
""",
    ),
    ("code", INSTALL),
    ("md", SETUP_MD),
    (
        "code",
        setup(
            "import jax.numpy as jnp", "import jnet2net\nfrom jnet2net import data, models, train"
        ),
    ),
    ("md", DATA_MD),
    ("code", DATA),
    (
        "md",
        """\
## 1. Build a ResNet and train it briefly

`models.ResNet` is a Flax module whose fields *are* the architecture: blocks per stage and
channels per stage. `model.init` gives its variables (`params` and BatchNorm
`batch_stats`). `train.fit` trains it with SGD on the whole dataset on device and evaluates
it after every epoch.
""",
    ),
    (
        "code",
        """\
widths = (4, 8) if SMALL else (16, 32, 64)
model = models.ResNet(stage_depths=(1,) * len(widths), stage_widths=widths, num_classes=10)
example = jnp.zeros((1, *train_set.image_shape))
variables = model.init(jax.random.key(0), example, train=False)
print("layers:", model.layer_names())
print("parameters:", sum(x.size for x in jax.tree.leaves(variables["params"])))
""",
    ),
    ("code", config(small_epochs=2, epochs=3)),
    (
        "code",
        """\
result = train.fit(model, train_set, test_set, config, variables=variables)
for record in result.history:
    print(f"epoch {record['epoch']}: test accuracy {record['test_acc']:.3f}")
variables = result.state.variables
""",
    ),
    (
        "md",
        """\
## 2. Widen and deepen

`jnet2net.widen` copies randomly chosen channels of each stage (Net2WiderNet) and divides
the weights that read them, so the sum is unchanged; a small zero-sum noise breaks the
symmetry between the copies without changing the function. `jnet2net.deepen` adds residual
blocks whose last BatchNorm scale is zero (Net2DeeperNet for ResNets): a new block adds
nothing until training moves it. Both return a new module and new variables; the old ones
are untouched.
""",
    ),
    (
        "code",
        """\
wide_model, wide_vars = jnet2net.widen(
    model, variables, widths=tuple(2 * w for w in widths), key=jax.random.key(1)
)
deep_model, deep_vars = jnet2net.deepen(
    wide_model, wide_vars, depths=(2,) * len(widths), key=jax.random.key(2)
)
print("teacher:", model.stage_depths, model.stage_widths)
print("grown:  ", deep_model.stage_depths, deep_model.stage_widths)
print("parameters:", sum(x.size for x in jax.tree.leaves(deep_vars["params"])))
""",
    ),
    (
        "md",
        """\
## 3. Check that the function is preserved

`jnet2net.output_error(model_a, vars_a, model_b, vars_b, xs)` runs both networks over a
stack of batches `xs` of shape `(n_batches, batch, h, w, c)` with `jax.vmap` and returns,
per batch, `max |a - b| / max |a|`. In float32 it stays far below `1e-5`, in evaluation mode
and in training mode (BatchNorm on batch statistics) alike.
""",
    ),
    (
        "code",
        """\
xs = jax.random.normal(jax.random.key(3), (4, 16, *train_set.image_shape))
print("eval mode: ", jnet2net.output_error(model, variables, deep_model, deep_vars, xs))
print("train mode:", jnet2net.output_error(model, variables, deep_model, deep_vars, xs, train=True))
print("test accuracy before growing:", train.evaluate(model, variables, test_set)[1])
print("test accuracy after growing: ", train.evaluate(deep_model, deep_vars, test_set)[1])
""",
    ),
    (
        "md",
        """\
## 4. Keep training the grown network

The grown variables go to `train.fit` like any others; training starts from the small
network's accuracy.
""",
    ),
    (
        "code",
        """\
result = train.fit(deep_model, train_set, test_set, config, variables=deep_vars)
for record in result.history:
    print(f"epoch {record['epoch']}: test accuracy {record['test_acc']:.3f}")
""",
    ),
    (
        "md",
        """\
## 5. Vision transformers grow the same way

`models.ViT` is a pre-LayerNorm transformer over 4x4 patches. `widen` grows its MLP units,
its heads (each keeps its width) and its embedding width (only by a whole multiple: the
LayerNorms normalise over the residual stream, so every unit is copied the same number of
times); `deepen` appends blocks whose residual outputs are zero. The grown transformer
computes the trained one's function and keeps training from there.
""",
    ),
    (
        "code",
        """\
embed, mlp = (16, 32) if SMALL else (96, 192)
vit = models.ViT(patch_size=4, embed_dim=embed, depth=2, num_heads=2, mlp_dim=mlp)
vit_vars = vit.init(jax.random.key(5), jnp.zeros((1, *train_set.image_shape)), train=False)
vit_vars = train.fit(vit, train_set, test_set, config, variables=vit_vars).state.variables
sizes = dict(embed_dim=2 * embed, num_heads=4, mlp_dim=2 * mlp)
big_vit, big_vars = jnet2net.widen(vit, vit_vars, key=jax.random.key(6), noise="fresh", **sizes)
big_vit, big_vars = jnet2net.deepen(big_vit, big_vars, depth=4, key=jax.random.key(7))
print(f"grown ViT: embed {big_vit.embed_dim}, {big_vit.depth} blocks, {big_vit.num_heads} heads")
print("output error:", jnet2net.output_error(vit, vit_vars, big_vit, big_vars, xs).max())
before = train.evaluate(vit, vit_vars, test_set)[1]
after = train.evaluate(big_vit, big_vars, test_set)[1]
print(f"test accuracy before / after growing: {before:.3f} / {after:.3f}")
""",
    ),
]

# --- 02 Net2Net on CIFAR-10 ------------------------------------------------------------------

NET2NET = [
    (
        "md",
        """\
# Net2Net: teacher -> student vs. training from scratch

The experiment of the Net2Net paper in small: train a *teacher*, grow it into a wider
student (Net2WiderNet) and a deeper student (Net2DeeperNet), train each student and the same
architecture from a random initialisation with the same budget, and compare test-accuracy
curves. A student starts at the teacher's accuracy; the question is how much sooner it gets
further than the network trained from scratch.
""",
    ),
    ("code", INSTALL),
    ("md", SETUP_MD),
    (
        "code",
        setup(
            "import matplotlib.pyplot as plt",
            "import jnet2net\nfrom jnet2net import data, models, train",
        ),
    ),
    ("md", DATA_MD),
    ("code", DATA),
    (
        "md",
        """\
## 1. Train the teacher

A CIFAR-style ResNet with one residual block per stage. Every run below uses the same
training config (SGD with Nesterov momentum, cosine learning-rate schedule).
""",
    ),
    ("code", config(small_epochs=2, epochs=10)),
    (
        "code",
        """\
widths = (4, 8) if SMALL else (16, 32, 64)
teacher = models.ResNet(stage_depths=(1,) * len(widths), stage_widths=widths)
teacher_vars = train.init_variables(teacher, train_set.images, key=jax.random.key(0))
teacher_run = train.fit(teacher, train_set, test_set, config, variables=teacher_vars)
teacher_vars = teacher_run.state.variables
teacher_acc = teacher_run.history[-1]["test_acc"]
print(f"teacher test accuracy: {teacher_acc:.3f}")
""",
    ),
    (
        "md",
        """\
## 2. Grow two students

`jnet2net.widen` doubles every stage's channels; `jnet2net.deepen` doubles every stage's
blocks. Both students compute the teacher's function, so they start at its accuracy.
""",
    ),
    (
        "code",
        """\
wider, wider_vars = jnet2net.widen(
    teacher, teacher_vars, widths=tuple(2 * w for w in widths), key=jax.random.key(1)
)
deeper, deeper_vars = jnet2net.deepen(
    teacher, teacher_vars, depths=(2,) * len(widths), key=jax.random.key(2)
)
for name, model, variables in [("wider", wider, wider_vars), ("deeper", deeper, deeper_vars)]:
    accuracy = train.evaluate(model, variables, test_set)[1]
    print(f"{name} student {model.stage_depths} x {model.stage_widths}: accuracy {accuracy:.3f}")
""",
    ),
    (
        "md",
        """\
## 3. Students vs. scratch

Each network trains for the same number of epochs. `run` evaluates the starting point
(step 0) and returns its records: step, test accuracy and, after each epoch, the seconds
so far (`wall_s`).
""",
    ),
    (
        "code",
        """\
def run(model, variables):
    start = {"step": 0, "test_acc": train.evaluate(model, variables, test_set)[1]}
    result = train.fit(model, train_set, test_set, config, variables=variables)
    return [start, *result.history]


def random_init(model, seed):
    return train.init_variables(model, train_set.images, key=jax.random.key(seed))


runs = {
    "Net2WiderNet student": run(wider, wider_vars),
    "wider, random init": run(wider, random_init(wider, 3)),
    "Net2DeeperNet student": run(deeper, deeper_vars),
    "deeper, random init": run(deeper, random_init(deeper, 4)),
}
""",
    ),
    (
        "md",
        """\
## 4. Curves and summary

Test accuracy against training steps; the dashed line is the teacher. *Steps to beat
teacher* is the first evaluated step at which a run is more accurate than the teacher.
""",
    ),
    (
        "code",
        """\
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
""",
    ),
]

# --- 03 weight reuse -------------------------------------------------------------------------

REUSE = [
    (
        "md",
        """\
# Weight reuse between similar architectures

Net2Net grows a network into a strict superset of itself. `jnet2net.transfer` is more
general: it maps the weights of a trained network onto *any* similar network of the same
family, deeper or shallower, wider or narrower, and reports what every destination weight
got. When the destination is a superset (deeper and wider only) the function is preserved
exactly; otherwise the report lists each approximation (dropped blocks, folded channels).

We train a source ResNet, transfer it to four neighbours, and train each one briefly from
the reused weights and from a random initialisation.
""",
    ),
    ("code", INSTALL),
    ("md", SETUP_MD),
    (
        "code",
        setup(
            "import matplotlib.pyplot as plt\nimport numpy as np",
            "import jnet2net\nfrom jnet2net import data, models, train",
        ),
    ),
    ("md", DATA_MD),
    ("code", DATA),
    (
        "md",
        """\
## 1. Train the source network

A CIFAR-style ResNet with two residual blocks per stage.
""",
    ),
    ("code", config(small_epochs=2, epochs=10)),
    (
        "code",
        """\
widths = (8, 12) if SMALL else (32, 64, 128)
stages = len(widths)
source = models.ResNet(stage_depths=(2,) * stages, stage_widths=widths)
source_run = train.fit(source, train_set, test_set, config)
source_vars = source_run.state.variables
print(f"source test accuracy: {source_run.history[-1]['test_acc']:.3f}")
""",
    ),
    (
        "md",
        """\
## 2. Transfer to four neighbours

Deeper stages get the source blocks spread over them plus new blocks that start as
identities; shallower stages keep evenly spaced source blocks. Wider layers replicate
channels (as Net2WiderNet); narrower layers keep the channels with the largest weights and
fold each dropped channel into its most similar kept one.
""",
    ),
    (
        "code",
        """\
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
""",
    ),
    (
        "md",
        """\
**The reuse report.** One row per destination leaf: `exact` (copied), `transformed`
(computed from source weights: replicated, split, folded), `partial` (part source, part new)
or `fresh` (new: identity blocks, fresh init), with where it came from; then totals and the
approximations that change the function. Here is the report of the narrower network.
""",
    ),
    ("code", 'print(reports["narrower"])'),
    (
        "md",
        """\
## 3. Train briefly: reused weights vs. random initialisation

Each destination trains for one epoch from its reused weights and from a random
initialisation. Accuracy is measured before (step 0) and after.
""",
    ),
    (
        "code",
        """\
brief = config.replace(epochs=1)
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
""",
    ),
    (
        "code",
        """\
names = list(destinations)
x = np.arange(len(names))
for offset, start in [(-0.2, "reuse"), (0.2, "random")]:
    accuracy = [results[name, start][1] for name in names]
    plt.bar(x + offset, accuracy, width=0.4, label=f"from {start}")
plt.xticks(x, names)
plt.ylabel("test accuracy after one epoch")
plt.legend()
plt.show()
""",
    ),
]

# --- 04 scale-down -----------------------------------------------------------------------------

SCALE_DOWN = [
    (
        "md",
        """\
# Training-time scale-down (Learn&Drop)

Early stages of a CNN settle long before training ends. Scale-down freezes a growing prefix
of stages (never the last stage or the head) so that the run's training FLOPs come to a
target fraction of full training's. The frozen prefix needs no backward pass and no
optimizer state; in `cache` mode even its forward pass is computed once and its outputs are
reused. Fewer FLOPs per step, shorter epochs.

We train a ResNet with `jnet2net.scale_down.fit_scale_down`, look at each epoch's cut,
FLOPs and time, and compare with ordinary training for the same number of epochs.
""",
    ),
    ("code", INSTALL),
    ("md", SETUP_MD),
    (
        "code",
        setup(
            "import matplotlib.pyplot as plt",
            "from jnet2net import data, models, scale_down, train",
        ),
    ),
    ("md", DATA_MD),
    ("code", DATA),
    ("code", config(small_epochs=4, epochs=15)),
    (
        "md",
        """\
## 1. Scale-down settings

Cuts sit at stage boundaries. Before training, every candidate cut's step is compiled and its
FLOPs read from the executable; the freezes are then placed `min_spacing` apart, none before
`not_before`, as late as `target_compute` (training FLOPs over full training's) allows. Every
`check_every` steps a stage whose relative update is below `ready_ratio` times the median of
the deeper stages' may freeze earlier. A freezing stage's learning rate ramps to zero over
`ramp`, and its BatchNorm statistics are recalibrated. `mode='cache'` stores the frozen
prefix's outputs (without random crops; mirror images with `cache_augment='flip'`),
`'nograd'` recomputes them every step with the usual augmentation.
""",
    ),
    (
        "code",
        """\
if SMALL:
    model = models.ResNet(stage_depths=(2, 2), stage_widths=(8, 16))
    scale_config = scale_down.ScaleDownConfig(
        target_compute=0.85, check_every=5, mode="cache", cache_augment="none"
    )
else:
    model = models.preset("resnet20")
    scale_config = scale_down.ScaleDownConfig(target_compute=0.7, mode="cache")
print("layers:", model.layer_names())
print("candidate cuts:", scale_down.candidate_cuts(model, scale_config.max_stages))
print(scale_config)
""",
    ),
    (
        "md",
        """\
## 2. Train with scale-down

Each epoch record says how many layers were frozen (`cut`, counted from the input), the
FLOPs of one step in use (from XLA's cost analysis of its executable), this epoch's FLOPs
against full training's, and the time.
""",
    ),
    (
        "code",
        """\
result = scale_down.fit_scale_down(model, train_set, test_set, config, scale_config)

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
""",
    ),
    (
        "md",
        """\
## 3. Against full training

The same network and config trained the usual way for as many epochs. The summary of the
scale-down run gives the training FLOPs saved (cache builds and recalibrations included), its
time, and the seconds spent compiling every candidate cut's step before training: in SMALL
mode, where an epoch takes well under a second, those compiles outweigh the saving; on
CIFAR-10 with an accelerator the shorter steps of the later epochs win.
""",
    ),
    (
        "code",
        """\
full = train.fit(model, train_set, test_set, config)
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
""",
    ),
    (
        "code",
        """\
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
epochs = [r["epoch"] for r in result.history]
left.bar(epochs, [r["epoch_flops"] / r["full_epoch_flops"] for r in result.history])
left.set(xlabel="epoch", ylabel="training FLOPs vs. full", ylim=(0, 1.05))
right.plot(epochs, [r["test_acc"] for r in result.history], "o-", label="scale-down")
right.plot(epochs, [r["test_acc"] for r in full.history], "o-", label="full training")
right.set(xlabel="epoch", ylabel="test accuracy")
right.legend()
plt.show()
""",
    ),
]

NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_net2net_cifar10.ipynb": NET2NET,
    "03_weight_reuse.ipynb": REUSE,
    "04_scale_down.ipynb": SCALE_DOWN,
}


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """A notebook without outputs from ``(kind, source)`` pairs (``'md'`` or ``'code'``)."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata = {
        "accelerator": "GPU",
        "colab": {"provenance": []},
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for kind, source in cells:
        source = textwrap.dedent(source).strip("\n")
        if kind == "md":
            notebook.cells.append(nbformat.v4.new_markdown_cell(source))
        elif kind == "code":
            notebook.cells.append(nbformat.v4.new_code_cell(source))
        else:
            raise ValueError(f"cell kind must be 'md' or 'code', got {kind!r}")
    for index, cell in enumerate(notebook.cells):
        cell.id = f"cell-{index:02d}"
    nbformat.validate(notebook)
    return notebook


def main() -> None:
    """Writes every notebook next to this script."""
    for name, cells in NOTEBOOKS.items():
        nbformat.write(build(cells), HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
