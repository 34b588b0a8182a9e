"""Tests of jnet2net.data: sources, the Dataset record, normalisation and augmentation."""

import io
import os
import pathlib

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnet2net import data

SHARED_TFDS = pathlib.Path(os.environ.get("JNET2NET_TFDS_DIR", "/work/shared/data/tfds"))


# --- digits -------------------------------------------------------------------------------


def test_digits_splits_are_fixed_stratified_uint8():
    train, test = data.load("digits", "train"), data.load("digits", "test")
    chex.assert_shape(train.images, (1437, 8, 8, 1))
    chex.assert_shape(test.images, (360, 8, 8, 1))
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
    assert train.images.max() == 255 and train.images.min() == 0
    assert train.num_classes == test.num_classes == 10 and train.name == "digits"
    # Stratified: every class has 35 or 37 test images (1797 digits, 174..183 per class).
    counts = np.bincount(test.labels, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38, counts
    again = data.load("digits", "test")
    np.testing.assert_array_equal(again.images, test.images)
    np.testing.assert_array_equal(again.labels, test.labels)
    # Both splits carry the training split's statistics.
    assert train.mean == test.mean and train.std == test.std
    np.testing.assert_allclose(train.mean[0], train.images.mean(), rtol=1e-6)


def test_digits_splits_do_not_overlap():
    train, test = data.load("digits", "train"), data.load("digits", "test")

    def rows(dataset):
        return [
            i.tobytes() + bytes([y]) for i, y in zip(dataset.images, dataset.labels, strict=True)
        ]

    shared = set(rows(train)) & set(rows(test))
    assert len(shared) < 5  # a handful of digits are pixel-identical duplicates in the source


def test_split_slices_take_rows():
    train = data.load("digits", "train")
    head = data.load("digits", "train[:100]")
    tail = data.load("digits", "test[-10:]")
    np.testing.assert_array_equal(head.images, train.images[:100])
    assert len(tail) == 10 and head.mean == train.mean
    with pytest.raises(
        ValueError, match=r"split 'train\[:10%\]' is not 'NAME' or 'NAME\[start:stop\]'"
    ):
        data.load("digits", "train[:10%]")


@pytest.mark.parametrize(
    ("name", "split", "error", "match"),
    [
        ("imagenet2", "train", ValueError, r"known datasets: digits, cifar10, cifar100, mnist"),
        (3, "train", ValueError, "unknown dataset 3"),
        ("digits", "validation", ValueError, r"digits has splits \('train', 'test'\)"),
        ("digits", 0, TypeError, "split must be a string"),
    ],
)
def test_load_rejects_bad_names_and_splits(name, split, error, match):
    with pytest.raises(error, match=match):
        data.load(name, split)


# --- tfds ---------------------------------------------------------------------------------


def test_missing_tfds_dataset_says_how_to_prepare_it(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load("mnist", "train", data_dir=tmp_path)
    message = str(info.value)
    assert "'mnist'" in message and str(tmp_path) in message
    assert "data_dir" in message and "download=True" in message and "internet" in message
    assert "digits" in message


def test_failed_download_reports_the_cause(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to reach storage.googleapis.com")

    monkeypatch.setattr(tfds, "data_source", offline)  # never touch the network in tests
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load("cifar10", "train", data_dir=tmp_path, download=True)
    message = str(info.value)
    assert "download=True was given, but downloading or preparing failed" in message
    assert "tensorflow-datasets said: ConnectionError: Failed to reach" in message


def test_tfds_mock_data_loads_images_and_labels():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        mnist = data.load("mnist", "train")
        cifar100 = data.load("cifar100", "test")
    chex.assert_shape(mnist.images, (6, 28, 28, 1))
    chex.assert_shape(cifar100.images, (6, 32, 32, 3))
    assert mnist.images.dtype == np.uint8 and mnist.labels.dtype == np.int32
    assert mnist.num_classes == 10 and cifar100.num_classes == 100
    assert mnist.mean == data.NORMALIZATION["mnist"][0]
    assert len(cifar100.class_names) == 100


@pytest.mark.skipif(not (SHARED_TFDS / "cifar10").is_dir(), reason="no prepared cifar10 here")
def test_cifar10_from_prepared_tfds_dir():
    pytest.importorskip("tensorflow_datasets")
    test = data.load("cifar10", "test[:48]", data_dir=SHARED_TFDS)
    chex.assert_shape(test.images, (48, 32, 32, 3))
    assert test.num_classes == 10 and test.class_names[0] == "airplane"
    assert test.mean == data.NORMALIZATION["cifar10"][0]
    assert test.labels.min() >= 0 and test.labels.max() < 10


# --- npz packs ----------------------------------------------------------------------------


def _encoded_pack(path, images, labels, fmt="PNG"):
    from PIL import Image

    blobs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, fmt)
        blobs.append(np.frombuffer(buffer.getvalue(), np.uint8))
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    return {"jpeg": np.concatenate(blobs), "offsets": offsets, "labels": labels}


@pytest.fixture
def pixels():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    return images, np.array([0, 1, 2, 1, 0], np.int64)


def test_load_npz_decodes_encoded_pack_exactly(tmp_path, pixels):
    images, labels = pixels
    train = _encoded_pack(tmp_path, images, labels)
    test = _encoded_pack(tmp_path, images[:2], labels[:2])
    path = tmp_path / "cifar10_jpeg.npz"
    np.savez(
        path,
        **{f"train_{k}": v for k, v in train.items()},
        **{f"test_{k}": v for k, v in test.items()},
        class_names=np.array(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]),
    )
    loaded = data.load_npz(path, "train")
    np.testing.assert_array_equal(loaded.images, images)  # PNG is lossless
    np.testing.assert_array_equal(loaded.labels, labels)
    assert loaded.name == "cifar10" and loaded.num_classes == 10
    assert loaded.mean == data.NORMALIZATION["cifar10"][0]
    # load() finds the pack in a folder, or takes the file itself.
    from_dir = data.load("cifar10", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(from_dir.images, images[:2])
    from_file = data.load("cifar10", "test", data_dir=path)
    np.testing.assert_array_equal(from_file.labels, labels[:2])


def test_data_dir_from_the_environment(tmp_path, pixels, monkeypatch):
    images, labels = pixels
    np.savez(tmp_path / "mnist.npz", train_images=images[..., :1], train_labels=labels)
    monkeypatch.setenv("JNET2NET_DATA_DIR", str(tmp_path))
    loaded = data.load("mnist", "train[1:3]")
    np.testing.assert_array_equal(loaded.images, images[1:3, ..., :1])
    assert loaded.mean == data.NORMALIZATION["mnist"][0] and loaded.num_classes == 10


def test_load_npz_raw_layout_uses_train_statistics(tmp_path, pixels):
    images, labels = pixels
    path = tmp_path / "mine.npz"
    np.savez(
        path,
        train_images=images,
        train_labels=labels,
        test_images=images[:1],
        test_labels=labels[:1],
    )
    test = data.load_npz(path, "test")
    assert test.name == "mine" and test.num_classes == 3
    expected_mean, expected_std = data.channel_stats(images)
    np.testing.assert_allclose(test.mean, expected_mean)
    np.testing.assert_allclose(test.std, expected_std)


def test_load_npz_errors_name_the_problem(tmp_path, pixels):
    images, labels = pixels
    with pytest.raises(data.DatasetNotFoundError, match="no npz pack at"):
        data.load_npz(tmp_path / "absent.npz", "train")
    path = tmp_path / "p.npz"
    np.savez(path, train_images=images, train_labels=labels)
    with pytest.raises(ValueError, match=r"has splits \['train'\], got 'test'"):
        data.load_npz(path, "test")
    np.savez(path, train_pixels=images, train_labels=labels)
    with pytest.raises(ValueError, match="lacks 'train_images' or 'train_jpeg'"):
        data.load_npz(path, "train")


def test_load_npz_refuses_pixels_that_are_not_bytes(tmp_path, pixels):
    """Float pixels in [0, 1] would truncate to 0 and 1 when cast to uint8."""
    images, labels = pixels
    path = tmp_path / "p.npz"
    np.savez(path, train_images=images / 255.0, train_labels=labels)
    with pytest.raises(TypeError, match=r"'train_images' must hold pixels 0..255 .* got float64"):
        data.load_npz(path, "train")
    np.savez(path, train_images=images.astype(np.int64) * 2, train_labels=labels)
    with pytest.raises(TypeError, match=r"got int64 in \[0, 5\d\d\]"):
        data.load_npz(path, "train")
    np.savez(path, train_images=images.astype(np.int64), train_labels=labels)
    np.testing.assert_array_equal(data.load_npz(path, "train").images, images)


def test_decode_images_keeps_grey_channel():
    from PIL import Image

    grey = np.arange(16, dtype=np.uint8).reshape(4, 4)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "PNG")
    decoded = data.decode_images([buffer.getvalue()] * 2)
    chex.assert_shape(decoded, (2, 4, 4, 1))
    np.testing.assert_array_equal(decoded[1, ..., 0], grey)


def _png(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_decode_images_converts_palette_and_bilevel_images():
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    palette = Image.fromarray(rgb).convert("P")
    np.testing.assert_array_equal(
        data.decode_images([_png(palette)])[0], np.asarray(palette.convert("RGB"))
    )
    bilevel = Image.fromarray(np.eye(4, dtype=bool))
    np.testing.assert_array_equal(data.decode_images([_png(bilevel)])[0, ..., 0], np.eye(4) * 255)
    deep = Image.fromarray(np.full((4, 4), 1000, np.uint16))
    with pytest.raises(TypeError, match=r"8-bit grey or RGB pixels, got mode 'I"):
        data.decode_images([_png(deep)])


def test_load_npz_gives_grey_raw_images_a_channel(tmp_path, pixels):
    images, labels = pixels
    path = tmp_path / "grey.npz"
    np.savez(path, train_images=images[..., 0], train_labels=labels)
    loaded = data.load_npz(path, "train")
    np.testing.assert_array_equal(loaded.images, images[..., :1])


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.array([0.0, 1.5, 2.0, 1.0, 0.0]), r"'train_labels' must hold ints, got float64"),
        (np.array([0, 1, 2**32 + 1, 1, 0]), r"labels must lie in \[0, 10\), got \[0, 4294967297\]"),
    ],
)
def test_load_npz_refuses_labels_it_would_change(tmp_path, pixels, labels, match):
    path = tmp_path / "fashion_mnist.npz"
    np.savez(path, train_images=pixels[0][..., :1], train_labels=labels)
    with pytest.raises((TypeError, ValueError), match=match):
        data.load_npz(path, "train")


# --- Dataset and normalisation ------------------------------------------------------------


def test_dataset_rejects_bad_arrays():
    images = np.zeros((3, 4, 4, 1), np.uint8)
    with pytest.raises(TypeError, match=r"images must be uint8 \(n, h, w, c\), got float32"):
        data.from_arrays(images.astype(np.float32), [0, 1, 2])
    with pytest.raises(
        TypeError, match=r"images must be uint8 \(n, h, w, c\), got uint8 \(3, 4, 4\)"
    ):
        data.from_arrays(images[..., 0], [0, 1, 2])
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        data.from_arrays(images, [0, 1])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\), got \[0, 2\]"):
        data.from_arrays(images, [0, 1, 2], num_classes=2)
    with pytest.raises(TypeError, match="labels must be ints"):
        data.from_arrays(images, [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="need 1 entries"):
        data.from_arrays(images, [0, 1, 2], mean=(1.0, 2.0), std=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"mean \(nan,\) and std \(1.0,\) must be finite"):
        data.from_arrays(images, [0, 1, 2], mean=(float("nan"),), std=(1.0,))
    with pytest.raises(ValueError, match=r"std must be positive, got \(inf,\)|must be finite"):
        data.from_arrays(images, [0, 1, 2], mean=(0.0,), std=(float("inf"),))
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        data.from_arrays(images[:0], np.zeros(0, np.int32), num_classes=0)


def test_from_arrays_and_take():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (10, 4, 4, 2), dtype=np.uint8)
    dataset = data.from_arrays(images, np.arange(10) % 4, name="toy")
    assert dataset.num_classes == 4 and len(dataset) == 10 and dataset.image_shape == (4, 4, 2)
    np.testing.assert_allclose(dataset.mean, images.reshape(-1, 2).mean(0))
    np.testing.assert_allclose(dataset.std, images.reshape(-1, 2).std(0))
    first = dataset.take(3)
    assert len(first) == 3 and first.mean == dataset.mean
    np.testing.assert_array_equal(dataset.take(np.array([9, 0])).labels, [1, 0])
    np.testing.assert_array_equal(dataset.take(np.int64(2)).labels, [0, 1])  # a count
    with pytest.raises(ValueError, match=r"'toy': take\(n\) needs a count n >= 0, got -2"):
        dataset.take(-2)


def test_normalize_per_channel():
    images = jnp.array([[[[10, 20]]]], jnp.uint8)
    out = data.normalize(images, (10.0, 10.0), (1.0, 5.0), jnp.bfloat16)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32).ravel(), [0.0, 2.0])
    with pytest.raises(ValueError, match=r"2 channels but mean \(10.0,\) and std \(1.0,\)"):
        data.normalize(images, (10.0,), (1.0,))  # would broadcast one grey mean over RGB


# --- augmentation -------------------------------------------------------------------------


@pytest.fixture
def batch():
    return jnp.asarray(np.random.default_rng(2).integers(1, 256, (16, 6, 6, 3), dtype=np.uint8))


def test_augment_is_deterministic_per_key(batch):
    key_a, key_b = jax.random.key(0), jax.random.key(1)
    out_a = data.augment(key_a, batch)
    chex.assert_equal_shape((out_a, batch))
    assert out_a.dtype == jnp.uint8
    np.testing.assert_array_equal(out_a, data.augment(key_a, batch))
    np.testing.assert_array_equal(out_a, jax.jit(data.augment)(key_a, batch))
    assert not np.array_equal(out_a, data.augment(key_b, batch))


def test_augment_without_crop_and_flip_is_identity(batch):
    out = data.augment(jax.random.key(0), batch, crop_padding=0, flip=False)
    np.testing.assert_array_equal(out, batch)


def test_flip_only_mirrors_or_keeps_each_image(batch):
    out = np.asarray(data.augment(jax.random.key(3), batch, crop_padding=0))
    kept = [np.array_equal(o, b) for o, b in zip(out, np.asarray(batch), strict=True)]
    mirrored = [np.array_equal(o, b[:, ::-1]) for o, b in zip(out, np.asarray(batch), strict=True)]
    assert all(k or m for k, m in zip(kept, mirrored, strict=True))
    assert 0 < sum(mirrored) < len(mirrored)


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**31 - 1), padding=st.integers(1, 3))
def test_random_crop_is_a_window_of_the_padded_image(seed, padding):
    images = np.random.default_rng(seed).integers(1, 256, (4, 5, 5, 1), dtype=np.uint8)
    out = np.asarray(data.random_crop(jax.random.key(seed), jnp.asarray(images), padding=padding))
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    size = 2 * padding + 1
    for o, p in zip(out, padded, strict=True):
        windows = [p[r : r + 5, c : c + 5] for r in range(size) for c in range(size)]
        assert any(np.array_equal(o, w) for w in windows)


def test_crop_offsets_cover_the_range_uniformly():
    images = jnp.ones((1000, 4, 4, 1), jnp.uint8)
    out = np.asarray(data.random_crop(jax.random.key(0), images, padding=2))
    for axis in (2, 1):  # rows, then columns
        nonzero = out[..., 0].sum(axis=axis) > 0  # (n, 4)
        leading = nonzero.argmax(axis=1)
        trailing = nonzero[:, ::-1].argmax(axis=1)
        offset = 2 - leading + trailing
        counts = np.bincount(offset, minlength=5)
        assert counts.size == 5 and counts.min() > 150, counts  # ~200 each


def test_crop_at_center_offset_returns_the_image(batch):
    offsets = jnp.full((batch.shape[0], 2), 2)
    np.testing.assert_array_equal(data.crop_at(batch, offsets, padding=2), batch)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda k, x: data.augment(k, x[0]),
            r"augment needs images \(n, h, w, c\), got shape \(6, 6, 3\)",
        ),
        (
            lambda k, x: data.augment(k, x, crop_padding=-1),
            "crop padding must be an int >= 0, got -1",
        ),
        (
            lambda k, x: data.random_crop(k, x, padding=1.5),
            "crop padding must be an int >= 0, got 1.5",
        ),
        (lambda k, x: data.random_flip(k, x[0]), r"random_flip needs images"),
    ],
)
def test_augment_rejects_bad_inputs(batch, call, match):
    with pytest.raises(ValueError, match=match):
        call(jax.random.key(0), batch)
