"""Host transforms of one record's image (numpy, one image at a time): resizing, centre
crops, and the host augmentations a stream applies before batching."""

from __future__ import annotations

import numpy as np

#: Host augmentations a stream applies before batching.
HOST_AUGMENTATIONS = ("none", "crop_flip", "crop", "flip", "resized_crop_flip")

#: Seeds host augmentation apart from every other use of the seed.
HOST_AUGMENT_STREAM = 12


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image (h, w, c)`` uint8 resized to ``(height, width, c)`` (Pillow, bilinear with
    antialiasing)."""
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    channels = image.shape[-1]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    out = np.asarray(pil.resize((width, height), Image.BILINEAR))
    return out[..., None] if out.ndim == 2 else out


def center_crop(image: np.ndarray, shape: tuple[int, int, int], crop_fraction: float) -> np.ndarray:
    """Resizes ``image (h, w, c)`` so its shorter side is ``shape[0] / crop_fraction`` and
    crops the centre ``shape[:2]``: the standard evaluation view. Returns ``shape`` uint8."""
    height, width = shape[:2]
    h, w = image.shape[:2]
    scale = max(height, width) / crop_fraction / min(h, w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    image = resize(image, new_h, new_w)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return image[top : top + height, left : left + width]


def fit_image(image: np.ndarray, shape: tuple[int, int, int], crop_fraction: float) -> np.ndarray:
    """``image`` itself when it has ``shape``, else its :func:`center_crop`."""
    if image.shape == tuple(shape):
        return image
    if image.shape[-1] != shape[-1]:
        raise ValueError(f"an image of shape {image.shape} has not the {shape[-1]} channels wanted")
    return center_crop(image, shape, crop_fraction)


def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    *,
    min_area: float = 0.08,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> np.ndarray:
    """Inception-style crop: a random box of ``[min_area, 1]`` of the image's area and
    aspect ratio in ``ratio`` (log-uniform), resized to ``shape``. After ``attempts``
    boxes that do not fit, the centre square. Returns ``shape`` uint8."""
    h, w = image.shape[:2]
    area = h * w
    for _ in range(attempts):
        target = area * rng.uniform(min_area, 1.0)
        aspect = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
        cw = round(np.sqrt(target * aspect))
        ch = round(np.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return resize(image[top : top + ch, left : left + cw], shape[0], shape[1])
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return resize(image[top : top + side, left : left + side], shape[0], shape[1])


def random_crop_flip(
    image: np.ndarray, rng: np.random.Generator, *, padding: int, flip: bool = True
) -> np.ndarray:
    """CIFAR-style host augmentation of ``image (h, w, c)``: zero-pad by ``padding``, crop
    ``(h, w)`` at a uniform offset, mirror left-right with probability 1/2 (``flip``)."""
    h, w = image.shape[:2]
    if padding:
        padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
        top, left = rng.integers(0, 2 * padding + 1, size=2)
        image = padded[top : top + h, left : left + w]
    if flip and rng.integers(0, 2):
        image = image[:, ::-1]
    return image


def host_augmented(
    image: np.ndarray,
    rng: np.random.Generator | None,
    shape: tuple[int, int, int],
    *,
    augment: str,
    crop_padding: int,
    crop_fraction: float,
    min_crop_area: float,
) -> np.ndarray:
    """One record's image as the stream yields it: ``shape`` uint8, augmented as
    ``augment`` (one of :data:`HOST_AUGMENTATIONS`) says."""
    if augment == "resized_crop_flip":
        image = random_resized_crop(image, rng, shape, min_area=min_crop_area)
        return image[:, ::-1] if rng.integers(0, 2) else image
    image = fit_image(image, shape, crop_fraction)
    if augment == "none":
        return image
    padding = crop_padding if augment in ("crop_flip", "crop") else 0
    return random_crop_flip(image, rng, padding=padding, flip=augment != "crop")


def example_rng(seed: int, step: int, row: int) -> np.random.Generator:
    """The host augmentation generator of row ``row`` of global step ``step``'s batch."""
    return np.random.default_rng([int(seed), HOST_AUGMENT_STREAM, int(step), int(row)])


def check_host_augment(augment: str) -> None:
    """Raises ValueError unless ``augment`` is one of :data:`HOST_AUGMENTATIONS`."""
    if augment not in HOST_AUGMENTATIONS:
        raise ValueError(f"host augment must be one of {HOST_AUGMENTATIONS}, got {augment!r}")
