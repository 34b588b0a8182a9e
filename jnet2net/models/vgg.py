"""VGG: stages of 'SAME' convs (+BatchNorm) + ReLU, 2x2 max-pool per stage, dense head."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jnet2net.coupling import Member, UnitGroup, conv_consumer, layer_producers
from jnet2net.models.common import batch_norm, check_sizes, conv


class ConvLayer(nn.Module):
    """conv -> [BatchNorm] -> ReLU [-> 2x2 max-pool]: ``(n, h, w, c) -> (n, h', w', width)``."""

    width: int
    kernel_size: int = 3
    batch_norm: bool = True
    pool: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = conv(self.width, self.kernel_size, self.dtype, "conv", use_bias=not self.batch_norm)(x)
        if self.batch_norm:
            x = batch_norm(train, self.dtype, "bn")(x)
        x = nn.relu(x)
        if self.pool:
            x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME")
        return x


def _flatten(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


@jax.tree_util.register_static
class VGG(nn.Module):
    """VGG network; its fields are the architecture.

    Layers, in order (their names are the parameter paths): ``stage{s}_layer{i}`` (conv
    layers; the last of each stage max-pools), ``hidden{j}`` (Dense + ReLU on the
    channels-last flattened features), ``head`` (Dense to ``num_classes``).

    Attributes:
      stage_depths: conv layers per stage.
      stage_widths: channels of every conv layer of a stage.
      hidden_widths: widths of the hidden dense layers of the head.
      num_classes: outputs.
      batch_norm: BatchNorm after every conv (convs then have no bias).
      kernel_size: odd conv kernel size.
      dtype: compute dtype (parameters stay float32).
    """

    stage_depths: tuple[int, ...]
    stage_widths: tuple[int, ...]
    hidden_widths: tuple[int, ...] = ()
    num_classes: int = 10
    batch_norm: bool = True
    kernel_size: int = 3
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        check_sizes("VGG.stage_depths", self.stage_depths)
        check_sizes("VGG.stage_widths", self.stage_widths, len(self.stage_depths))
        if self.hidden_widths:
            check_sizes("VGG.hidden_widths", self.hidden_widths)
        check_sizes("VGG.num_classes", (self.num_classes,))
        check_sizes("VGG.kernel_size", (self.kernel_size,))
        # One dtype object per dtype, so equal modules hash equally (jit static args).
        if self.dtype is not None:
            object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
        super().__post_init__()

    def conv_layer_names(self) -> list[tuple[int, str]]:
        """``(stage, name)`` of every conv layer, input first."""
        return [
            (s, f"stage{s}_layer{i}")
            for s, depth in enumerate(self.stage_depths)
            for i in range(depth)
        ]

    def layer_names(self) -> tuple[str, ...]:
        """Every layer in execution order; ``start``/``stop`` of ``__call__`` index these."""
        convs = [name for _, name in self.conv_layer_names()]
        hidden = [f"hidden{j}" for j in range(len(self.hidden_widths))]
        return (*convs, *hidden, "head")

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = False, *, start: int = 0, stop: int | None = None
    ) -> jax.Array:
        """Runs layers ``[start, stop)``.

        Args:
          x: images ``(n, h, w, c)`` when ``start == 0``, else the output of layer
            ``start - 1``.
          train: batch statistics (and their update) instead of running averages.
          start: first layer to run.
          stop: one past the last layer to run (``None``: through the head).

        Returns:
          float32 logits ``(n, num_classes)``, or the activation after layer ``stop - 1``.
        """
        names = self.layer_names()
        stop = len(names) if stop is None else stop
        conv_layers = self.conv_layer_names()
        for index in range(start, stop):
            name = names[index]
            if index < len(conv_layers):
                stage, _ = conv_layers[index]
                last_of_stage = index + 1 == len(conv_layers) or conv_layers[index + 1][0] != stage
                x = ConvLayer(
                    self.stage_widths[stage],
                    self.kernel_size,
                    self.batch_norm,
                    pool=last_of_stage,
                    dtype=self.dtype,
                    name=name,
                )(x, train)
            elif name == "head":
                x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(_flatten(x))
                x = x.astype(jnp.float32)
            else:
                j = index - len(conv_layers)
                x = nn.Dense(self.hidden_widths[j], dtype=self.dtype, name=name)(_flatten(x))
                x = nn.relu(x)
        return x

    # --- growth metadata ---------------------------------------------------------------

    def width_of(self, field: tuple[str, int | None]) -> int:
        """The size that a unit group's ``field`` names."""
        name, index = field
        return getattr(self, name)[index]

    def unit_groups(self) -> tuple[UnitGroup, ...]:
        """One group per conv layer and per hidden dense layer."""
        conv_layers = self.conv_layer_names()
        dense_names = [f"hidden{j}" for j in range(len(self.hidden_widths))] + ["head"]
        groups = []
        for index, (stage, name) in enumerate(conv_layers):
            if index + 1 < len(conv_layers):
                consumer = conv_consumer((conv_layers[index + 1][1],), "conv")
            else:
                consumer = Member(("params", dense_names[0], "kernel"), 0, "consumer", True)
            members = layer_producers(
                (name,),
                kernel="conv",
                norm="bn" if self.batch_norm else None,
                bias=not self.batch_norm,
            )
            groups.append(UnitGroup(name, ("stage_widths", stage), (*members, consumer)))
        for j, name in enumerate(dense_names[:-1]):
            members = layer_producers((name,), kernel="", norm=None, bias=True)
            consumer = Member(("params", dense_names[j + 1], "kernel"), 0, "consumer")
            groups.append(UnitGroup(name, ("hidden_widths", j), (*members, consumer)))
        return tuple(groups)

    def example_input(self, variables: Any) -> jax.Array:
        """A zero batch ``(1, h, w, c)`` whose shapes fit ``variables`` (for init/eval_shape).

        The spatial size follows from the first dense kernel: ``h * w`` flattened positions
        of ``stage_widths[-1]`` channels after ``len(stage_depths)`` 2x2 pools. A square map
        is taken when ``h * w`` is a square, else the most nearly square ``h <= w``.
        """
        params = variables["params"]
        first = self.conv_layer_names()[0][1]
        dense = "hidden0" if self.hidden_widths else "head"
        try:
            in_channels = params[first]["conv"]["kernel"].shape[2]
            flat = params[dense]["kernel"].shape[0]
        except (KeyError, TypeError, IndexError) as err:
            raise ValueError(
                f"variables do not hold params/{first}/conv/kernel and params/{dense}/kernel "
                f"of a VGG with stage_depths={self.stage_depths} and hidden_widths="
                f"{self.hidden_widths} (were they made for another architecture?)"
            ) from err
        positions, remainder = divmod(flat, self.stage_widths[-1])
        if remainder or positions == 0:
            raise ValueError(
                f"params/{dense}/kernel has {flat} inputs, which is not a feature map of "
                f"stage_widths[-1]={self.stage_widths[-1]} channels"
            )
        h = max(d for d in range(1, math.isqrt(positions) + 1) if positions % d == 0)
        scale = 2 ** len(self.stage_depths)
        return jnp.zeros((1, h * scale, positions // h * scale, in_channels), jnp.float32)
