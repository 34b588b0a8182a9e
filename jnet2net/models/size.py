"""How big a network is, from shapes only: size a network before allocating it."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

#: ``jnet2net grow``/``transfer`` refuse destinations with more parameters unless
#: ``--max-params`` raises it: 500M float32 parameters are 2 GB, 6-8 GB with the
#: optimizer state and gradients of training.
DEFAULT_MAX_PARAMS = 500_000_000


def _traced_count(model: nn.Module, shape: tuple[int, ...]) -> int:
    example = jax.ShapeDtypeStruct(shape, jnp.float32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), example)
    return sum(int(x.size) for x in jax.tree.leaves(abstract["params"]))


def param_count(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Trainable parameters of ``model`` on images of ``input_shape``, nothing allocated.

    ``jax.eval_shape`` traces the module with at most two layers/blocks per stage; deeper
    stages add their further blocks' parameters linearly (every block after a stage's first
    has the same shapes), so even a billion-block network is sized in a second.

    Args:
      model: a VGG or ResNet (any module with ``stage_depths``), or a ViT (``depth``).
      input_shape: ``(h, w, c)`` or ``(n, h, w, c)`` of the images.

    Returns:
      The number of entries of the ``params`` collection.
    """
    shape = (1, *(int(n) for n in tuple(input_shape)[-3:]))
    if not hasattr(model, "stage_depths"):  # a ViT: one stage of ``depth`` alike blocks
        base = _traced_count(model.clone(depth=min(model.depth, 2)), shape)
        if model.depth <= 2:
            return base
        per_block = base - _traced_count(model.clone(depth=1), shape)
        return base + (model.depth - 2) * per_block
    depths: tuple[int, ...] = tuple(int(d) for d in model.stage_depths)
    small = tuple(min(d, 2) for d in depths)
    base = _traced_count(model.clone(stage_depths=small), shape)
    total = base
    for s, depth in enumerate(depths):
        if depth > 2:
            fewer = (*small[:s], 1, *small[s + 1 :])
            per_block = base - _traced_count(model.clone(stage_depths=fewer), shape)
            total += (depth - 2) * per_block
    return total


def describe_size(count: int) -> str:
    """``'1,234,567 parameters (4.7 MiB as float32)'``."""
    size = count * 4
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            break
        size /= 1024
    return f"{count:,} parameters ({size:.1f} {unit} as float32)"
