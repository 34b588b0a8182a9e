"""What a transfer did, for its report: one row per destination leaf, and the changes of
the pair that alter the function."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from jnet2net.coupling import Member
from jnet2net.engine.widening import MAX_EXACT_SPLIT_SCALE, Noise
from jnet2net.models import VGG, ViT
from jnet2net.models.common import compute_dtype
from jnet2net.reuse.groups import GroupOp
from jnet2net.reuse.layers import zero_block_leaves
from jnet2net.reuse.report import LeafReport, Status
from jnet2net.reuse.vit import POS_EMBED, grid_note, head_dim_note, vit_changes
from jnet2net.variables import path_str

Path = tuple[str, ...]


def cnn_changes(src: nn.Module, dst: nn.Module) -> list[str]:
    """Kernel size and stem changes of a VGG or ResNet transfer that alter the function."""
    changes = []
    k_src, k_dst = src.kernel_size, dst.kernel_size
    odd_pad = k_dst > k_src and k_src % 2 == 1 and k_dst % 2 == 1
    # A stride-2 'SAME' conv on an even size reads pixel 2i with a 1x1 kernel but centres a
    # larger odd kernel on 2i + 1: ResNets stride their first block of every stage past 0.
    strided_1x1 = odd_pad and k_src == 1 and not isinstance(src, VGG) and len(src.stage_depths) > 1
    if k_src != k_dst and (not odd_pad or strided_1x1):
        how = "centre-cropped" if k_dst < k_src else "padded off-centre (an even size)"
        if strided_1x1:
            how = "padded, but a strided conv's centre tap moves from pixel 2i to 2i + 1"
        changes.append(f"kernel_size {k_src} -> {k_dst}: kernels {how}")
    if getattr(src, "stem", None) != getattr(dst, "stem", None):
        changes.append(
            f"stem {src.stem!r} -> {dst.stem!r}: the stem conv is resized, its stride and "
            "pooling differ"
        )
    return changes


def model_changes(
    src: nn.Module, dst: nn.Module, noise: Noise, noise_scale: float, widens: bool
) -> list[str]:
    """Changes of kernel size, stem (ViT: sizes), classes, noise and dtype that alter the
    function."""
    changes = vit_changes(src, dst) if isinstance(src, ViT) else cnn_changes(src, dst)
    if src.num_classes != dst.num_classes:
        shared = min(src.num_classes, dst.num_classes)
        changes.append(
            f"num_classes {src.num_classes} -> {dst.num_classes}: the head keeps the first "
            f"{shared} classes' columns"
            + (", the other classes are initialised" if dst.num_classes > shared else "")
        )
    if noise == "paper" and widens:
        changes.append("noise='paper' adds noise to the split consumer weights")
    if noise == "split" and widens and noise_scale > MAX_EXACT_SPLIT_SCALE:
        changes.append(
            f"noise='split' with noise_scale={float(noise_scale)!r} > {MAX_EXACT_SPLIT_SCALE}: "
            "the replicas' shares are large and of both signs, so float32 rounding can exceed "
            "1e-5"
        )
    src_dtype, dst_dtype = compute_dtype(src), compute_dtype(dst)
    if src_dtype != dst_dtype:
        changes.append(
            f"dtype {src_dtype.name} -> {dst_dtype.name}: the destination computes at another "
            "precision"
        )
    return changes


def leaf_rows(plan: Any) -> tuple[LeafReport, ...]:
    """One row per destination leaf; fractions follow from the shapes."""
    members: dict[Path, list[tuple[GroupOp, Member]]] = {}
    for op in plan.group_ops:
        for member in op.group.members:
            members.setdefault(member.path, []).append((op, member))
    zeros = {
        path
        for layer, source in plan.layout.items()
        if source.kind == "zero_block"
        for path in zero_block_leaves(plan.dst_model, layer)
    }
    rows = []
    for path, target in plan.dst_shapes.items():
        source = plan.layout[path[1]]
        notes: list[str] = []
        src_path = None
        if source.kind in ("copy", "repeat", "composed"):
            src_path = path_str((path[0], source.source, *path[2:]))
        if source.kind == "repeat":
            notes.append("repeated layer")
        elif source.kind == "identity":
            notes.append("identity layer")
        elif source.kind == "zero_block":
            zero = path in zeros
            what = "scale" if path[-1] == "scale" else path[-1]
            notes.append("new block" + (f", {what} 0: the block adds nothing" if zero else ""))
        elif source.kind == "composed":
            notes.append(f"multiplied with {', '.join(source.folded)}")
        changed = source.kind == "composed"
        fraction = 0.0 if src_path is None else 1.0
        if source.kind != "zero_block":
            for op, member in members.get(path, ()):
                changed = True
                verb = {
                    (True, "producer"): "replicated",
                    (True, "consumer"): "split among replicas",
                    (False, "producer"): "kept the largest",
                    (False, "consumer"): "dropped units folded in",
                }[(op.widens, member.role)]
                notes.append(f"{op.group.name} {op.old} -> {op.new}: {verb}")
            mid_shape = plan.mid_shapes[path].shape
            if len(mid_shape) == 4 and mid_shape[:2] != target.shape[:2]:
                changed = True
                taps = [min(a, b) for a, b in zip(mid_shape[:2], target.shape[:2], strict=True)]
                fraction *= taps[0] * taps[1] / (target.shape[0] * target.shape[1])
                how = "padded" if mid_shape[0] < target.shape[0] else "cropped"
                notes.append(f"kernel {mid_shape[0]}x{mid_shape[1]} {how} to {target.shape[0]}")
            heads = None
            if isinstance(plan.src_model, ViT):
                tokens = plan.src_shapes[POS_EMBED].shape[1]
                heads = head_dim_note(path, plan.src_model, plan.dst_model) or grid_note(
                    path, plan.src_model, plan.dst_model, tokens, plan.input_shape
                )
            if heads is not None:
                changed = True
                fraction *= heads[0]
                notes.append(heads[1])
            if path[1] == "head" and mid_shape[-1] != target.shape[-1]:
                changed = True
                fraction *= min(mid_shape[-1], target.shape[-1]) / target.shape[-1]
                notes.append(f"classes {mid_shape[-1]} -> {target.shape[-1]}")
        status: Status
        if src_path is None:
            status = "fresh"
        elif not changed:
            status = "exact"
        else:
            status = "transformed" if fraction == 1.0 else "partial"
        rows.append(
            LeafReport(
                path_str(path), tuple(target.shape), status, fraction, src_path, "; ".join(notes)
            )
        )
    return tuple(rows)
