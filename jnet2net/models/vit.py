"""Vision Transformer: patch embedding, pre-LayerNorm encoder blocks, class token or mean pool.

Every submodule is named explicitly (``block0``, ``block1``, ...; inside a block ``norm1``,
``query``, ``key``, ``value``, ``out``, ``norm2``, ``mlp_in``, ``mlp_out``), so a deeper ViT
keeps the paths of the blocks it already had. Attention is written out with one
``DenseGeneral`` per projection: ``query``/``key``/``value`` kernels are
``(embed_dim, num_heads, head_dim)`` and ``out``'s is ``(num_heads, head_dim, embed_dim)``, so
a head is one index of one axis, which is what widening by heads replicates.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jnet2net.coupling import Member, UnitGroup
from jnet2net.models.common import check_sizes

Pool = Literal["cls", "mean"]
POOLS = ("cls", "mean")
LN_EPSILON = 1e-6

_embedding_init = nn.initializers.normal(stddev=0.02)


def _layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LN_EPSILON, dtype=dtype, param_dtype=jnp.float32, name=name)


def _dense(features: Any, dtype: Any, name: str, **kwargs: Any) -> nn.DenseGeneral:
    return nn.DenseGeneral(features, dtype=dtype, param_dtype=jnp.float32, name=name, **kwargs)


class EncoderBlock(nn.Module):
    """Pre-LayerNorm block ``(n, tokens, embed) -> (n, tokens, embed)``.

    ``x + attention(norm1(x))``, then ``x + mlp_out(gelu(mlp_in(norm2(x))))``.
    """

    num_heads: int
    head_dim: int
    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        embed = x.shape[-1]
        y = _layer_norm(self.dtype, "norm1")(x)
        heads = (self.num_heads, self.head_dim)
        q = _dense(heads, self.dtype, "query")(y)  # (n, tokens, heads, head_dim)
        k = _dense(heads, self.dtype, "key")(y)
        v = _dense(heads, self.dtype, "value")(y)
        logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(self.head_dim)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        attended = jnp.einsum("nhqk,nkhd->nqhd", weights, v)
        x = x + _dense(embed, self.dtype, "out", axis=(-2, -1))(attended)
        y = _layer_norm(self.dtype, "norm2")(x)
        y = nn.gelu(_dense(self.mlp_dim, self.dtype, "mlp_in")(y))
        return x + _dense(embed, self.dtype, "mlp_out")(y)


@jax.tree_util.register_static
class ViT(nn.Module):
    """Vision Transformer; its fields are the architecture.

    Layers, in order (their names are the parameter paths): ``patch_embed`` (a
    ``patch_size`` x ``patch_size`` conv with stride ``patch_size``), ``cls_token`` (only with
    ``pool='cls'``), ``pos_embed`` (learned, one row per token, sized by the first input),
    ``block{i}`` (:class:`EncoderBlock`), ``norm`` (final LayerNorm), ``head`` (Dense to
    ``num_classes`` on the class token or on the mean of the tokens).

    There is no dropout and no BatchNorm: ``train`` changes nothing, and the variables hold
    ``params`` only.

    Attributes:
      patch_size: side of the square patches; image sides must be multiples of it.
      embed_dim: width of the residual stream.
      depth: number of encoder blocks.
      num_heads: attention heads per block.
      mlp_dim: hidden units of each block's MLP.
      num_classes: outputs.
      pool: ``'cls'`` (a learned class token, read out after the last block) or ``'mean'``
        (mean over the patch tokens).
      dtype: compute dtype (parameters stay float32).
      head_dim: width of each head; ``None``: ``embed_dim // num_heads`` (which must divide).
    """

    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_dim: int
    num_classes: int = 10
    pool: Pool = "cls"
    dtype: Any = jnp.float32
    head_dim: int | None = None

    def __post_init__(self) -> None:
        for name in ("patch_size", "embed_dim", "depth", "num_heads", "mlp_dim", "num_classes"):
            check_sizes(f"ViT.{name}", (getattr(self, name),))
        if self.head_dim is not None:
            check_sizes("ViT.head_dim", (self.head_dim,))
        elif self.embed_dim % self.num_heads:
            raise ValueError(
                f"ViT.embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}: "
                "choose a head count that divides it, or give head_dim explicitly"
            )
        if self.pool not in POOLS:
            raise ValueError(f"ViT.pool must be one of {POOLS}, got {self.pool!r}")
        # One dtype object per dtype, so equal modules hash equally (jit static args).
        if self.dtype is not None:
            object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
        super().__post_init__()

    def resolved_head_dim(self) -> int:
        """``head_dim`` with its default (``embed_dim // num_heads``) filled in."""
        return self.embed_dim // self.num_heads if self.head_dim is None else self.head_dim

    def block_names(self) -> tuple[str, ...]:
        """``('block0', ..., f'block{depth - 1}')``, input first."""
        return tuple(f"block{i}" for i in range(self.depth))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits of a batch of images.

        Args:
          x: images ``(n, h, w, c)`` with ``h`` and ``w`` multiples of ``patch_size``.
          train: accepted for the common model interface; a ViT has no train-mode layers.

        Returns:
          float32 logits ``(n, num_classes)``.
        """
        del train
        p = self.patch_size
        if x.ndim != 4 or x.shape[1] % p or x.shape[2] % p:
            raise ValueError(
                f"ViT with patch_size={p} needs images (n, h, w, c) with h and w multiples of "
                f"{p}, got shape {x.shape}"
            )
        x = nn.Conv(
            self.embed_dim,
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="patch_embed",
        )(x)
        n = x.shape[0]
        x = x.reshape(n, -1, self.embed_dim)  # (n, patches, embed), row-major patches
        if self.pool == "cls":
            cls = self.param("cls_token", _embedding_init, (1, 1, self.embed_dim), jnp.float32)
            cls = jnp.broadcast_to(cls.astype(x.dtype), (n, 1, self.embed_dim))
            x = jnp.concatenate([cls, x], axis=1)
        pos = self.param("pos_embed", _embedding_init, (1, *x.shape[1:]), jnp.float32)
        x = x + pos.astype(x.dtype)
        for name in self.block_names():
            x = EncoderBlock(
                self.num_heads, self.resolved_head_dim(), self.mlp_dim, self.dtype, name=name
            )(x)
        x = _layer_norm(self.dtype, "norm")(x)
        x = x[:, 0] if self.pool == "cls" else jnp.mean(x, axis=1)
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="head")(x)
        return x.astype(jnp.float32)

    # --- growth metadata ---------------------------------------------------------------

    def width_of(self, field: tuple[str, int | None]) -> int:
        """The size that a unit group's ``field`` names (``('mlp_dim', None)`` -> 64)."""
        name, _ = field
        return getattr(self, name)

    def unit_groups(self) -> tuple[UnitGroup, ...]:
        """The residual stream (``embed``), then per block its heads and its MLP units.

        ``embed`` spans the patch embedding's outputs, the class token, the position
        embedding, every LayerNorm, every projection's input rows (consumers) and the
        attention and MLP outputs written back to the stream (producers), and the head's
        input; it is ``uniform_only`` (the LayerNorms average over it). A head group indexes
        axis 1 of ``query``/``key``/``value`` kernels (axis 0 of their biases) and axis 0 of
        ``out``'s kernel.
        """

        def params(*path: str) -> tuple[str, ...]:
            return ("params", *path)

        def norm(*layer: str) -> list[Member]:
            return [Member(params(*layer, n), 0, "producer") for n in ("scale", "bias")]

        embed = [
            Member(params("patch_embed", "kernel"), -1, "producer"),
            Member(params("patch_embed", "bias"), 0, "producer"),
            Member(params("pos_embed"), -1, "producer"),
        ]
        if self.pool == "cls":
            embed.append(Member(params("cls_token"), -1, "producer"))
        heads, mlps = [], []
        projections = ("query", "key", "value")
        for block in self.block_names():
            embed += norm(block, "norm1")
            embed += [Member(params(block, p, "kernel"), 0, "consumer") for p in projections]
            embed += [
                Member(params(block, "out", "kernel"), -1, "producer"),
                Member(params(block, "out", "bias"), 0, "producer"),
            ]
            embed += norm(block, "norm2")
            embed += [
                Member(params(block, "mlp_in", "kernel"), 0, "consumer"),
                Member(params(block, "mlp_out", "kernel"), -1, "producer"),
                Member(params(block, "mlp_out", "bias"), 0, "producer"),
            ]
            head_members = [Member(params(block, p, "kernel"), 1, "producer") for p in projections]
            head_members += [Member(params(block, p, "bias"), 0, "producer") for p in projections]
            head_members.append(Member(params(block, "out", "kernel"), 0, "consumer"))
            heads.append(UnitGroup(f"{block}_heads", ("num_heads", None), tuple(head_members)))
            mlp_members = (
                Member(params(block, "mlp_in", "kernel"), -1, "producer"),
                Member(params(block, "mlp_in", "bias"), 0, "producer"),
                Member(params(block, "mlp_out", "kernel"), 0, "consumer"),
            )
            mlps.append(UnitGroup(f"{block}_mlp", ("mlp_dim", None), mlp_members))
        embed += norm("norm")
        embed.append(Member(params("head", "kernel"), 0, "consumer"))
        stream = UnitGroup("embed", ("embed_dim", None), tuple(embed), uniform_only=True)
        return (stream, *heads, *mlps)

    def example_input(self, variables: Any) -> jax.Array:
        """A zero batch ``(1, h, w, c)`` whose shapes fit ``variables`` (for init/eval_shape).

        The number of patches follows from ``params/pos_embed`` (less the class token); a
        square grid is taken when it is a square, else the most nearly square ``h <= w``.
        """
        params = variables["params"]
        try:
            in_channels = params["patch_embed"]["kernel"].shape[2]
            tokens = params["pos_embed"].shape[1]
        except (KeyError, TypeError, IndexError) as err:
            raise ValueError(
                "variables do not hold params/patch_embed/kernel and params/pos_embed, which "
                "every ViT has (were they made for another architecture?)"
            ) from err
        patches = tokens - (1 if self.pool == "cls" else 0)
        if patches < 1:
            raise ValueError(
                f"params/pos_embed has {tokens} rows, too few for a ViT with pool={self.pool!r}"
            )
        h = max(d for d in range(1, math.isqrt(patches) + 1) if patches % d == 0)
        p = self.patch_size
        return jnp.zeros((1, h * p, patches // h * p, in_channels), jnp.float32)
