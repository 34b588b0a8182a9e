"""Scale-down steps: train the layers after a cut, the frozen prefix run without gradient
or read from a cache; moving the cut.

The network is cut at ``cut``: layers ``[0, cut)`` are *frozen* (kept in a separate
variables dict, run in eval mode with their running BatchNorm statistics, never
differentiated, no optimizer state), layers ``[cut, end)`` are *trained* (the
:class:`~jnet2net.train.TrainState` holds only their params, batch stats and moments).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jnet2net.data.augment import augment_choices
from jnet2net.data.dataset import normalize
from jnet2net.models.common import compute_dtype
from jnet2net.scale_down import cache as cache_lib
from jnet2net.scale_down.policy import ramp_multipliers
from jnet2net.scale_down.split import (
    check_cut,
    merge_variables,
    prefix_apply,
    shrink_opt_state,
    split_variables,
    suffix_apply,
)
from jnet2net.train.batches import augment_key, batch_indices
from jnet2net.train.config import TrainConfig
from jnet2net.train.sharding import batch_sharding, replicated
from jnet2net.train.state import TrainState, variables_of
from jnet2net.train.steps import (
    augment_batch,
    correct_predictions,
    cross_entropy_loss,
    named,
)
from jnet2net.variables import Variables

Metrics = dict[str, jax.Array]

#: ``TrainConfig.augment`` values that flip images (only these may read a mirrored view).
FLIP_AUGMENTS = ("crop_flip", "flip")

# --- steps -------------------------------------------------------------------------------


def flip_choices(key: jax.Array, n: int) -> jax.Array:
    """``(n,)`` int32: 1 where :func:`~jnet2net.data.augment` with ``key`` mirrors example i.

    Read off the augmentation's own choices (:func:`~jnet2net.data.augment_choices`; the
    flips do not depend on the crop), so a cached step takes the mirrored view exactly
    where the no-grad step of the same step number flips the image.
    """
    return augment_choices(key, n, crop_padding=0, flip=True)[1].astype(jnp.int32)


def scaled_updates(
    names: Sequence[str],
    updates: Any,
    step: jax.Array,
    freeze_at: jax.Array,
    ramp_steps: int,
    lr_scale: Sequence[float] | None = None,
) -> Any:
    """``updates`` (keyed by layer name) times each layer's :func:`ramp_multipliers`."""
    multipliers = ramp_multipliers(step, freeze_at, ramp_steps, lr_scale)
    index = {name: i for i, name in enumerate(names)}
    return {
        name: jax.tree.map(lambda u, m=multipliers[index[name]]: u * m.astype(u.dtype), tree)
        for name, tree in updates.items()
    }


def suffix_update_fn(
    model: nn.Module,
    config: TrainConfig,
    cut: int,
    ramp_steps: int = 0,
    lr_scale: Sequence[float] | None = None,
) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, Metrics]]:
    """``(state, h, labels, freeze_at) -> (state, {'loss', 'accuracy'})``: one suffix step.

    ``h`` is the input of layer ``cut`` (normalised images at ``cut == 0``); ``state``
    holds the params, batch stats and optimizer state of layers ``[cut, end)`` only, so
    the gradient, the backward pass and the update cover the suffix alone. Each layer's
    update is multiplied by its learning-rate ramp (:func:`ramp_multipliers` of
    ``freeze_at (layers,)`` int32, ``ramp_steps`` and the static per-layer ``lr_scale``).
    """
    names = model.layer_names()

    def update(
        state: TrainState, h: jax.Array, labels: jax.Array, freeze_at: jax.Array
    ) -> tuple[TrainState, Metrics]:
        def loss_fn(params: Any) -> tuple[jax.Array, tuple[Any, jax.Array]]:
            logits, stats = suffix_apply(model, params, state.batch_stats, h, cut, train=True)
            losses = cross_entropy_loss(logits, labels, label_smoothing=config.label_smoothing)
            return losses.mean(), (stats, logits)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (stats, logits)), grads = grad_fn(state.params)
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        updates = scaled_updates(names, updates, state.step, freeze_at, ramp_steps, lr_scale)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
            batch_stats=stats if stats else {},
        )
        return new_state, {"loss": loss, "accuracy": correct_predictions(logits, labels).mean()}

    return update


def make_scaled_train_step(
    model: nn.Module,
    config: TrainConfig,
    cut: int,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    steps_per_epoch: int,
    ramp_steps: int = 0,
    lr_scale: Sequence[float] | None = None,
    cached: bool = False,
    random_view: bool = False,
    crop_window: tuple[int, int] | None = None,
    crop_padding: int = 0,
    mesh: Mesh | None = None,
) -> Callable[..., tuple[TrainState, Metrics]]:
    """The jitted step that trains layers ``[cut, end)`` on device data (state donated).

    No-grad (``cached=False``): ``(state, frozen, images, labels, permutation,
    freeze_at)``; the batch ``state.step % steps_per_epoch`` of ``permutation`` is
    gathered from ``images (n, h, w, c)`` uint8, augmented as ``config.augment`` says,
    normalised, run through the frozen prefix in eval mode without gradient, then through
    the suffix with gradient.

    Cached (``cached=True``): ``(state, activations, labels, permutation, freeze_at)``
    where ``activations (n_pad, views, ...)`` are an
    :class:`~jnet2net.scale_down.cache.ActivationCache`'s; with two views each example
    takes the mirrored one where the no-grad step of the same step number flips it
    (:func:`flip_choices` of ``augment_key(seed, step)``), with one view (or when
    ``config.augment`` has no flips: ``'crop'``, ``'none'``) the plain one. With
    ``random_view`` (a cache of augmented views) each example takes a view drawn uniformly
    with ``augment_key(seed, step)``. With ``crop_window`` (a cache of the images
    zero-padded by ``crop_padding``) each example's map is cropped and flipped where the
    no-grad step crops and flips its image (:func:`~jnet2net.scale_down.cache.cached_crops`).

    ``freeze_at (layers,)`` int32 gives each layer's freeze step; its updates ramp to zero
    over the ``ramp_steps`` before it (:func:`suffix_update_fn`).

    Args:
      model: the network in its compute dtype.
      config: batch size, augmentation, label smoothing, seed.
      cut: number of frozen layers.
      mean, std: normalisation of the images.
      steps_per_epoch: batches per epoch.
      ramp_steps: length of the learning-rate ramps.
      lr_scale: each layer's learning-rate factor (``None``: 1).
      cached: read the prefix's output from a cache.
      random_view: pick cached views at random (augmented views) instead of by flips.
      crop_window: ``(h', w')``, the prefix's output size on an unpadded image, for a cache
        of padded images (``None``: no crops).
      crop_padding: the padding of those images.
      mesh: shard batches over ``'data'``, replicate the rest (the cache stays sharded).

    Returns:
      the jitted step ``-> (state, {'loss', 'accuracy'})``.
    """
    update = suffix_update_fn(model, config, cut, ramp_steps, lr_scale)
    dtype = compute_dtype(model)
    batch_size = config.batch_size

    def indices(state: TrainState, permutation: jax.Array) -> jax.Array:
        index = batch_indices(permutation, state.step % steps_per_epoch, batch_size)
        if mesh is not None:
            index = jax.lax.with_sharding_constraint(index, batch_sharding(mesh))
        return index

    def nograd_step(
        state: TrainState,
        frozen: Variables,
        images: jax.Array,
        labels: jax.Array,
        permutation: jax.Array,
        freeze_at: jax.Array,
    ) -> tuple[TrainState, Metrics]:
        index = indices(state, permutation)
        x = augment_batch(config, augment_key(config.seed, state.step), images[index])
        h = prefix_apply(model, frozen, normalize(x, mean, std, dtype), cut)
        return update(state, h, labels[index], freeze_at)

    def cached_step(
        state: TrainState,
        activations: jax.Array,
        labels: jax.Array,
        permutation: jax.Array,
        freeze_at: jax.Array,
    ) -> tuple[TrainState, Metrics]:
        index = indices(state, permutation)
        view, key = None, augment_key(config.seed, state.step)
        flips = activations.shape[1] > 1 and config.augment in FLIP_AUGMENTS
        if crop_window is not None:
            h = cache_lib.cached_crops(
                activations, index, key, window=crop_window, padding=crop_padding, flip=flips
            )
        else:
            if random_view:
                view = jax.random.randint(key, (batch_size,), 0, activations.shape[1])
            elif flips:
                view = flip_choices(key, batch_size)
            h = cache_lib.gather_views(activations, index, view)
        return update(state, h, labels[index], freeze_at)

    if mesh is None:
        return jax.jit(
            named("scale_down_step", cached_step if cached else nograd_step), donate_argnums=0
        )
    rep, rows = replicated(mesh), batch_sharding(mesh)
    if cached:
        shardings = (rep, rows, rep, rep, rep)
        return jax.jit(
            named("scale_down_step", cached_step),
            donate_argnums=0,
            in_shardings=shardings,
            out_shardings=(rep, rep),
        )
    return jax.jit(
        named("scale_down_step", nograd_step),
        donate_argnums=0,
        in_shardings=rep,
        out_shardings=(rep, rep),
    )


# --- the cut -------------------------------------------------------------------------------


def move_cut(
    model: nn.Module, state: TrainState, frozen: Variables, cut: int
) -> tuple[TrainState, dict]:
    """Moves the trained layers before ``cut`` out of ``state`` into ``frozen``.

    Their params and batch stats join ``frozen``; their moments leave the optimizer state,
    whose other leaves (the remaining layers' moments, the step count) are kept as they are.

    Args:
      model: the network.
      state: the state of the layers from the old cut on.
      frozen: variables of the layers before the old cut.
      cut: the new cut (not before the old one).

    Returns:
      ``(state of layers [cut, end), variables of layers [0, cut))``.

    Raises:
      ValueError: ``cut`` is before the old cut (a layer it would train is frozen).
    """
    check_cut(model, cut)
    names = model.layer_names()
    old = next((i for i, name in enumerate(names) if name in state.params), len(names))
    if cut < old:
        raise ValueError(
            f"cut {cut} is before the current cut {old}: layer {names[cut]!r} is frozen and "
            "is never trained again"
        )
    trained = {"params": state.params, "batch_stats": state.batch_stats}
    moved, kept = split_variables(model, trained, cut)
    frozen = merge_variables(frozen, moved)
    opt_state = shrink_opt_state(state.tx, state.opt_state, kept["params"])
    state = state.replace(
        params=kept["params"], batch_stats=kept["batch_stats"], opt_state=opt_state
    )
    return state, frozen


def whole_variables(frozen: Variables, state: TrainState) -> dict:
    """The whole network's variables, without an empty ``batch_stats`` (as ``model.init``).

    Its tree is the same at every cut, so functions of it compile once.
    """
    merged = merge_variables(frozen, {"params": state.params, "batch_stats": state.batch_stats})
    return variables_of(merged["params"], merged.get("batch_stats", {}))


def with_stats(frozen: dict, stats: dict) -> dict:
    """``frozen`` with the ``batch_stats`` of the layers in ``stats`` replaced."""
    if not stats:
        return frozen
    return {**frozen, "batch_stats": {**frozen["batch_stats"], **stats}}
