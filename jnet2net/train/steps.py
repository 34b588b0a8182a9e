"""Loss, jitted train and eval steps.

The steps take uint8 images, normalise (and augment) them on device, and run the model in
``compute_dtype`` with float32 parameters. With a mesh, batches are sharded on ``'data'``
and the state is replicated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jnet2net.data.augment import augment
from jnet2net.data.dataset import normalize
from jnet2net.models.common import compute_dtype as dtype_of
from jnet2net.train.batches import batch_indices, stream_key
from jnet2net.train.config import TrainConfig
from jnet2net.train.sharding import batch_sharding, replicated
from jnet2net.train.state import TrainState, ema_update, variables_of

Metrics = dict[str, jax.Array]


def cross_entropy_loss(
    logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0
) -> jax.Array:
    """Per-example softmax cross-entropy against (smoothed) one-hot labels.

    Args:
      logits: ``(n, num_classes)``.
      labels: ``(n,)`` int class indices.
      label_smoothing: weight of the uniform distribution in the targets.

    Returns:
      ``(n,)`` float32 losses.
    """
    num_classes = logits.shape[-1]
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def correct_predictions(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``(n,)`` float32: 1 where the arg-max of ``logits (n, k)`` equals ``labels (n,)``."""
    return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def with_compute_dtype(model: nn.Module, compute_dtype: str | Any | None) -> nn.Module:
    """``model`` computing in ``compute_dtype`` (``None``: as it is); params stay float32.

    A model without a ``dtype`` field computes in float32, and only float32 is asked of it.
    """
    if compute_dtype is None:
        return model
    wanted = jnp.dtype(compute_dtype)
    if "dtype" not in getattr(model, "__dataclass_fields__", {}):
        if wanted == jnp.float32:
            return model
        raise TypeError(
            f"{type(model).__name__} has no 'dtype' field, so it cannot compute in "
            f"{wanted.name!r}; give it one (as jnet2net's models have) or use 'float32'"
        )
    if model.dtype is not None and jnp.dtype(model.dtype) == wanted:
        return model
    return model.clone(dtype=wanted)


def augment_batch(config: TrainConfig, key: jax.Array, images: jax.Array) -> jax.Array:
    """``images (n, h, w, c)`` augmented as ``config.augment`` says (``'resized_crop_flip'``
    is done on the host by the stream, so nothing here)."""
    if config.augment in ("none", "resized_crop_flip"):
        return images
    padding = config.crop_padding if config.augment in ("crop_flip", "crop") else 0
    return augment(key, images, crop_padding=padding, flip=config.augment != "crop")


def train_step_fn(
    model: nn.Module,
    config: TrainConfig,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, Metrics]]:
    """The un-jitted step ``(state, images, labels) -> (state, {'loss', 'accuracy'})``.

    ``images (b, h, w, c)`` uint8 are augmented with :func:`augment_key` of
    ``(config.seed, state.step)``, normalised with ``mean``/``std`` and run in
    ``config.compute_dtype``; ``loss`` (with label smoothing) and ``accuracy`` are batch
    means. With ``config.ema_decay`` the state's ``ema`` moves towards the updated
    variables (:func:`~jnet2net.train.state.ema_update`); the state must carry one. Build on
    this to make steps that differ in what they feed or freeze.
    """
    compute_model = with_compute_dtype(model, config.compute_dtype)
    dtype = jnp.dtype(config.compute_dtype)
    augment_root = stream_key(config.seed, "augment")  # concrete: keeps the compile small

    def step(state: TrainState, images: jax.Array, labels: jax.Array) -> tuple[TrainState, Metrics]:
        if config.ema_decay is not None and getattr(state, "ema", None) is None:
            raise ValueError(
                "TrainConfig.ema_decay is set but the state has no EMA: make it with "
                "create_train_state(config=...) or train.state.with_ema(state)"
            )
        if config.augment != "none":
            key = jax.random.fold_in(augment_root, state.step)  # == augment_key(seed, step)
            images = augment_batch(config, key, images)
        x = normalize(images, mean, std, dtype)

        def loss_fn(params: Any) -> tuple[jax.Array, tuple[Any, jax.Array]]:
            logits, updates = compute_model.apply(
                variables_of(params, state.batch_stats), x, train=True, mutable=["batch_stats"]
            )
            losses = cross_entropy_loss(logits, labels, label_smoothing=config.label_smoothing)
            return losses.mean(), (updates.get("batch_stats", {}), logits)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (batch_stats, logits)), grads = grad_fn(state.params)
        new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
        if config.ema_decay is not None:
            new_state = new_state.replace(
                ema=ema_update(state.ema, new_state.variables, config.ema_decay)
            )
        metrics = {"loss": loss, "accuracy": correct_predictions(logits, labels).mean()}
        return new_state, metrics

    return step


def named(name: str, fun: Callable[..., Any]) -> Callable[..., Any]:
    """``fun`` under the name ``name``: what JAX calls the program it traces and compiles
    (profiles, compile logs, and the ``fun_name`` of its tracing events)."""

    def program(*args: Any) -> Any:
        return fun(*args)

    program.__name__ = program.__qualname__ = name
    return program


def make_train_step(
    model: nn.Module,
    config: TrainConfig,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    mesh: Mesh | None = None,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, Metrics]]:
    """Jitted :func:`train_step_fn` ``(state, images, labels) -> (state, metrics)``.

    The state is donated. With ``mesh``, ``images (b, h, w, c)`` and ``labels (b,)`` are
    sharded on ``'data'`` (``b`` a multiple of the device count) and the state replicated.
    """
    step = named("train_step", train_step_fn(model, config, mean=mean, std=std))
    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    rep, batch = replicated(mesh), batch_sharding(mesh)
    return jax.jit(
        step, donate_argnums=0, in_shardings=(rep, batch, batch), out_shardings=(rep, rep)
    )


def make_indexed_train_step(
    model: nn.Module,
    config: TrainConfig,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    steps_per_epoch: int,
    mesh: Mesh | None = None,
) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, Metrics]]:
    """Jitted ``(state, images, labels, permutation) -> (state, metrics)`` on device data.

    ``images (n, h, w, c)`` and ``labels (n,)`` are the whole training set on device;
    ``permutation (n,)`` is the epoch's order (:func:`epoch_permutation`). The step takes
    batch ``state.step % steps_per_epoch`` of it, so no data crosses from the host.
    """
    inner = train_step_fn(model, config, mean=mean, std=std)
    batch_size = config.batch_size

    def step(
        state: TrainState, images: jax.Array, labels: jax.Array, permutation: jax.Array
    ) -> tuple[TrainState, Metrics]:
        index = batch_indices(permutation, state.step % steps_per_epoch, batch_size)
        if mesh is not None:
            index = jax.lax.with_sharding_constraint(index, batch_sharding(mesh))
        return inner(state, images[index], labels[index])

    step = named("indexed_train_step", step)
    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    rep = replicated(mesh)
    return jax.jit(step, donate_argnums=0, in_shardings=rep, out_shardings=(rep, rep))


def eval_step_fn(
    model: nn.Module,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    compute_dtype: str | Any | None = None,
) -> Callable[[Any, jax.Array, jax.Array, jax.Array], Metrics]:
    """The un-jitted ``(variables, images, labels, mask) -> {'loss', 'correct', 'count'}``.

    ``images (b, h, w, c)`` uint8, ``labels (b,)``, ``mask (b,)`` bool (False for padding);
    the results are sums over the unmasked examples (plain cross-entropy, eval mode).
    """
    compute_model = with_compute_dtype(model, compute_dtype)
    dtype = dtype_of(compute_model)

    def step(variables: Any, images: jax.Array, labels: jax.Array, mask: jax.Array) -> Metrics:
        logits = compute_model.apply(variables, normalize(images, mean, std, dtype), train=False)
        weight = mask.astype(jnp.float32)
        return {
            "loss": jnp.sum(cross_entropy_loss(logits, labels) * weight),
            "correct": jnp.sum(correct_predictions(logits, labels) * weight),
            "count": jnp.sum(weight),
        }

    return step


def make_eval_step(
    model: nn.Module,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    compute_dtype: str | Any | None = None,
    mesh: Mesh | None = None,
) -> Callable[[Any, jax.Array, jax.Array, jax.Array], Metrics]:
    """Jitted :func:`eval_step_fn`; with ``mesh`` the batch is sharded on ``'data'``."""
    step = named("eval_step", eval_step_fn(model, mean=mean, std=std, compute_dtype=compute_dtype))
    if mesh is None:
        return jax.jit(step)
    rep, batch = replicated(mesh), batch_sharding(mesh)
    return jax.jit(step, in_shardings=(rep, batch, batch, batch), out_shardings=rep)


def make_indexed_eval_step(
    model: nn.Module,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int,
    compute_dtype: str | Any | None = None,
    mesh: Mesh | None = None,
) -> Callable[[Any, jax.Array, jax.Array, jax.Array, jax.Array], Metrics]:
    """Jitted ``(variables, images, labels, index, totals) -> totals`` on device data.

    ``images (m, h, w, c)`` and ``labels (m,)`` hold an evaluation set padded to a multiple
    of ``batch_size``, where labels of padding rows are ``-1``; batch ``index`` is
    evaluated and its sums added to ``totals`` (donated).
    """
    inner = eval_step_fn(model, mean=mean, std=std, compute_dtype=compute_dtype)

    def step(
        variables: Any, images: jax.Array, labels: jax.Array, index: jax.Array, totals: Metrics
    ) -> Metrics:
        start = index * batch_size
        x = jax.lax.dynamic_slice_in_dim(images, start, batch_size)
        y = jax.lax.dynamic_slice_in_dim(labels, start, batch_size)
        if mesh is not None:
            x = jax.lax.with_sharding_constraint(x, batch_sharding(mesh))
            y = jax.lax.with_sharding_constraint(y, batch_sharding(mesh))
        sums = inner(variables, x, jnp.maximum(y, 0), y >= 0)
        return jax.tree.map(jnp.add, totals, sums)

    step = named("indexed_eval_step", step)
    if mesh is None:
        return jax.jit(step, donate_argnums=4)
    rep = replicated(mesh)
    return jax.jit(step, donate_argnums=4, in_shardings=rep, out_shardings=rep)
