"""ResNet with basic or bottleneck blocks and CIFAR or ImageNet stems."""

from __future__ import annotations

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jnet2net.coupling import Member, UnitGroup, conv_consumer, layer_producers
from jnet2net.models.common import batch_norm, check_sizes, conv

BlockKind = Literal["basic", "bottleneck"]
StemKind = Literal["cifar", "imagenet"]

#: Name of the BatchNorm whose output joins the residual stream, per block kind.
LAST_NORM = {"basic": "bn2", "bottleneck": "bn3"}
LAST_CONV = {"basic": "conv2", "bottleneck": "conv3"}


class Block(nn.Module):
    """Residual block ``(n, h, w, c_in) -> (n, h / strides, w / strides, width)``.

    basic: conv(k) -> BN -> ReLU -> conv(k) -> BN; bottleneck: conv1x1 -> BN -> ReLU ->
    conv(k, strides) -> BN -> ReLU -> conv1x1 -> BN. Then ``relu(y + shortcut)``, the
    shortcut a 1x1 conv + BN (``proj_conv``/``proj_bn``) when ``projection``.
    """

    kind: BlockKind
    width: int
    inner_width: int
    strides: int = 1
    projection: bool = False
    kernel_size: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        s = (self.strides, self.strides)
        k = self.kernel_size
        if self.kind == "basic":
            y = conv(self.inner_width, k, self.dtype, "conv1", strides=s)(x)
            y = nn.relu(batch_norm(train, self.dtype, "bn1")(y))
            y = conv(self.width, k, self.dtype, "conv2")(y)
            y = batch_norm(train, self.dtype, "bn2")(y)
        else:
            y = conv(self.inner_width, 1, self.dtype, "conv1")(x)
            y = nn.relu(batch_norm(train, self.dtype, "bn1")(y))
            y = conv(self.inner_width, k, self.dtype, "conv2", strides=s)(y)
            y = nn.relu(batch_norm(train, self.dtype, "bn2")(y))
            y = conv(self.width, 1, self.dtype, "conv3")(y)
            y = batch_norm(train, self.dtype, "bn3")(y)
        shortcut = x
        if self.projection:
            shortcut = conv(self.width, 1, self.dtype, "proj_conv", strides=s)(x)
            shortcut = batch_norm(train, self.dtype, "proj_bn")(shortcut)
        return nn.relu(y + shortcut)


class Stem(nn.Module):
    """cifar: conv3x3 -> BN -> ReLU; imagenet: conv7x7/2 -> BN -> ReLU -> max-pool 3x3/2."""

    kind: StemKind
    width: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.kind == "cifar":
            x = conv(self.width, 3, self.dtype, "conv")(x)
        else:
            x = conv(self.width, 7, self.dtype, "conv", strides=(2, 2))(x)
        x = nn.relu(batch_norm(train, self.dtype, "bn")(x))
        if self.kind == "imagenet":
            x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
        return x


@jax.tree_util.register_static
class ResNet(nn.Module):
    """ResNet; its fields are the architecture.

    Layers, in order (their names are the parameter paths): ``stem``,
    ``stage{s}_block{b}``, ``head`` (global average pool + Dense).

    Attributes:
      stage_depths: blocks per stage; stage ``s > 0`` starts with a stride-2 block.
      stage_widths: residual-stream width of each stage (block outputs).
      block: ``'basic'`` or ``'bottleneck'``.
      stem: ``'cifar'`` (3x3 conv) or ``'imagenet'`` (7x7/2 conv + 3x3/2 max-pool).
      num_classes: outputs.
      inner_widths: width inside the blocks of each stage; ``None``: the stage width
        (basic) or a quarter of it (bottleneck).
      stem_width: ``None``: the stem writes stage 0's stream directly (identity shortcut in
        its first block); an int: the stem has its own width and stage 0's first block a
        projection shortcut.
      kernel_size: odd size of the blocks' spatial convs.
      dtype: compute dtype (parameters stay float32).
    """

    stage_depths: tuple[int, ...]
    stage_widths: tuple[int, ...]
    block: BlockKind = "basic"
    stem: StemKind = "cifar"
    num_classes: int = 10
    inner_widths: tuple[int, ...] | None = None
    stem_width: int | None = None
    kernel_size: int = 3
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        check_sizes("ResNet.stage_depths", self.stage_depths)
        check_sizes("ResNet.stage_widths", self.stage_widths, len(self.stage_depths))
        if self.inner_widths is not None:
            check_sizes("ResNet.inner_widths", self.inner_widths, len(self.stage_depths))
        if self.stem_width is not None:
            check_sizes("ResNet.stem_width", (self.stem_width,))
        check_sizes("ResNet.num_classes", (self.num_classes,))
        check_sizes("ResNet.kernel_size", (self.kernel_size,))
        # One dtype object per dtype, so equal modules hash equally (jit static args).
        if self.dtype is not None:
            object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
        if self.block not in LAST_NORM:
            raise ValueError(f"ResNet.block must be 'basic' or 'bottleneck', got {self.block!r}")
        if self.stem not in ("cifar", "imagenet"):
            raise ValueError(f"ResNet.stem must be 'cifar' or 'imagenet', got {self.stem!r}")
        super().__post_init__()

    def resolved_inner_widths(self) -> tuple[int, ...]:
        """``inner_widths`` with its default filled in."""
        if self.inner_widths is not None:
            return self.inner_widths
        if self.block == "basic":
            return self.stage_widths
        return tuple(max(1, w // 4) for w in self.stage_widths)

    def block_names(self) -> list[tuple[int, int, str]]:
        """``(stage, index, name)`` of every block, input first."""
        return [
            (s, b, f"stage{s}_block{b}")
            for s, depth in enumerate(self.stage_depths)
            for b in range(depth)
        ]

    def layer_names(self) -> tuple[str, ...]:
        """Every layer in execution order; ``start``/``stop`` of ``__call__`` index these."""
        return ("stem", *(name for _, _, name in self.block_names()), "head")

    def has_projection(self, stage: int, index: int) -> bool:
        """Whether block ``index`` of ``stage`` has a projection shortcut."""
        return index == 0 and (stage > 0 or self.stem_width is not None)

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
        blocks = self.block_names()
        inner = self.resolved_inner_widths()
        for index in range(start, stop):
            if index == 0:
                width = self.stage_widths[0] if self.stem_width is None else self.stem_width
                x = Stem(self.stem, width, self.dtype, name="stem")(x, train)
            elif index == len(names) - 1:
                x = jnp.mean(x, axis=(1, 2))
                x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
                x = x.astype(jnp.float32)
            else:
                stage, b, name = blocks[index - 1]
                x = Block(
                    self.block,
                    self.stage_widths[stage],
                    inner[stage],
                    strides=2 if stage > 0 and b == 0 else 1,
                    projection=self.has_projection(stage, b),
                    kernel_size=self.kernel_size,
                    dtype=self.dtype,
                    name=name,
                )(x, train)
        return x

    # --- growth metadata ---------------------------------------------------------------

    def width_of(self, field: tuple[str, int | None]) -> int:
        """The size that a unit group's ``field`` names."""
        name, index = field
        if name == "inner_widths":
            return self.resolved_inner_widths()[index]
        value = getattr(self, name)
        return value if index is None else value[index]

    def unit_groups(self) -> tuple[UnitGroup, ...]:
        """The stem group (if ``stem_width``), one stream group per stage, inner groups."""
        groups = []
        blocks = self.block_names()
        last_conv, last_norm = LAST_CONV[self.block], LAST_NORM[self.block]
        if self.stem_width is not None:
            groups.append(
                UnitGroup(
                    "stem",
                    ("stem_width", None),
                    (
                        *layer_producers(("stem",), kernel="conv", norm="bn"),
                        conv_consumer(("stage0_block0",), "conv1"),
                        conv_consumer(("stage0_block0",), "proj_conv"),
                    ),
                )
            )
        for stage in range(len(self.stage_depths)):
            members: list[Member] = []
            if stage == 0 and self.stem_width is None:
                members += layer_producers(("stem",), kernel="conv", norm="bn")
            for s, b, name in blocks:
                if s == stage:
                    members += layer_producers((name,), kernel=last_conv, norm=last_norm)
                    if self.has_projection(s, b):
                        members += layer_producers((name,), kernel="proj_conv", norm="proj_bn")
                    else:
                        members.append(conv_consumer((name,), "conv1"))
                elif s == stage + 1 and b == 0:
                    members.append(conv_consumer((name,), "conv1"))
                    members.append(conv_consumer((name,), "proj_conv"))
            if stage == len(self.stage_depths) - 1:
                members.append(Member(("params", "head", "kernel"), 0, "consumer"))
            groups.append(
                UnitGroup(f"stage{stage}_stream", ("stage_widths", stage), tuple(members))
            )
        inner_convs = ["conv1"] if self.block == "basic" else ["conv1", "conv2"]
        following = {"conv1": "conv2", "conv2": "conv3"}
        for s, _, name in blocks:
            for i, conv_name in enumerate(inner_convs):
                members = layer_producers((name,), kernel=conv_name, norm=f"bn{i + 1}")
                consumer = conv_consumer((name,), following[conv_name])
                groups.append(
                    UnitGroup(f"{name}_{conv_name}", ("inner_widths", s), (*members, consumer))
                )
        return tuple(groups)

    def example_input(self, variables: Any) -> jax.Array:
        """A zero batch ``(1, 32, 32, c)`` whose channels fit ``variables``."""
        try:
            in_channels = variables["params"]["stem"]["conv"]["kernel"].shape[2]
        except (KeyError, TypeError, IndexError) as err:
            raise ValueError(
                "variables do not hold params/stem/conv/kernel, which every ResNet has (were "
                "they made for another architecture?)"
            ) from err
        return jnp.zeros((1, 32, 32, in_channels), jnp.float32)
