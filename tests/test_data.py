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


def _damaged_pack(path, kind, images, labels):
    """Writes a pack damaged in way ``kind`` to ``path``."""
    pack = {f"train_{k}": v for k, v in _encoded_pack(path, images, labels).items()}
    if kind == "offsets past the end":
        pack["train_offsets"] = pack["train_offsets"] * 3
    elif kind == "shifted offsets":
        pack["train_offsets"][2] += 7
    elif kind == "object array":
        pack["train_labels"] = np.array([object()] * len(labels), dtype=object)
    if kind == "one npy array":
        with open(path, "wb") as f:
            np.save(f, images)
        return
    np.savez(path, **pack)
    good = path.read_bytes()
    if kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "flipped byte":
        damaged = bytearray(good)
        damaged[200] ^= 0xFF  # inside the first member's data: its CRC no longer matches
        path.write_bytes(bytes(damaged))


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("random bytes", r"is not a readable \.npz pack \(neither a zip archive nor an \.npy"),
        ("truncated", r"is not a readable \.npz pack \(File is not a zip file\)"),
        ("empty", r"is not a readable \.npz pack"),
        ("flipped byte", r"'train_jpeg' cannot be read \(BadZipFile: Bad CRC-32"),
        ("offsets past the end", r"'train_offsets' must rise strictly .* run from 0 to \d+"),
        ("shifted offsets", r"'train_jpeg': image 2 \(\d+ bytes\) is in no image format"),
        ("object array", r"'train_labels' holds Python objects"),
        ("one npy array", r"holds one \.npy array, not an \.npz pack"),
    ],
)
def test_a_damaged_pack_is_named_in_one_line(tmp_path, pixels, kind, match):
    path = tmp_path / "cifar10_jpeg.npz"
    _damaged_pack(path, kind, *pixels)
    with pytest.raises(ValueError, match=match) as caught:
        data.load_npz(path, "train")
    message = str(caught.value)
    assert message.startswith(str(path)) and "\n" not in message and "0x" not in message
    with pytest.raises(ValueError, match=match):
        data.load("cifar10", "train", data_dir=tmp_path)


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


# --- reduced protocols: resolution and stratified subsets --------------------------------


def test_downsample_takes_block_means_rounded_half_up():
    images = np.array(
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 255]], np.uint8
    ).reshape(1, 4, 4, 1)
    out = data.downsample(images, 2)
    assert out.dtype == np.uint8
    # Block sums 10, 18, 42, 290: means 2.5, 4.5, 10.5, 72.5 round up.
    np.testing.assert_array_equal(out[0, ..., 0], [[3, 5], [11, 73]])
    assert data.downsample(images, 4) is images  # factor 1: the images themselves
    np.testing.assert_array_equal(data.downsample(images, 1)[0, 0, 0], [23])  # 360 / 16


def test_downsample_keeps_channels_and_downsamples_width_by_the_same_factor():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 12, 2), dtype=np.uint8)
    out = data.downsample(images, 4)
    chex.assert_shape(out, (3, 4, 6, 2))
    blocks = images.reshape(3, 4, 2, 6, 2, 2).astype(np.float64).mean(axis=(2, 4))
    np.testing.assert_array_equal(out, np.floor(blocks + 0.5).astype(np.uint8))


@pytest.mark.parametrize(
    ("shape", "resolution", "error", "match"),
    [
        ((2, 8, 8, 1), 3, ValueError, r"resolution 3 does not divide the image height 8 \(8x8"),
        ((2, 8, 8, 1), 16, ValueError, r"resolution 16 is larger than the image height 8 \(8x8"),
        ((2, 8, 6, 1), 2, ValueError, r"image width 6 .* factor 4"),
        ((2, 8, 8, 1), 0, ValueError, "resolution must be >= 1, got 0"),
        ((2, 8, 8, 1), 2.0, TypeError, "resolution must be an int, got 2.0"),
        ((2, 8, 8, 1), True, TypeError, "resolution must be an int, got True"),
        ((8, 8, 1), 4, ValueError, r"needs images \(n, h, w, c\), got shape \(8, 8, 1\)"),
    ],
)
def test_downsample_rejects_bad_resolutions(shape, resolution, error, match):
    with pytest.raises(error, match=match):
        data.downsample(np.zeros(shape, np.uint8), resolution)


def test_stratified_subset_is_balanced_sorted_and_seeded():
    labels = np.repeat(np.arange(4), [2, 10, 10, 30])
    chosen = data.stratified_subset(labels, 20, seed=1)
    assert chosen.dtype == np.int64 and len(np.unique(chosen)) == 20
    assert np.all(np.diff(chosen) > 0)  # sorted ascending
    # Class 0 has only 2 examples; the other 18 split evenly over the rest.
    np.testing.assert_array_equal(np.bincount(labels[chosen], minlength=4), [2, 6, 6, 6])
    np.testing.assert_array_equal(chosen, data.stratified_subset(labels, 20, seed=1))
    assert not np.array_equal(chosen, data.stratified_subset(labels, 20, seed=2))
    # A remainder goes one example each to some classes: counts differ by at most one.
    counts = np.bincount(labels[data.stratified_subset(labels, 23, seed=0)], minlength=4)
    assert counts.sum() == 23 and counts[0] == 2 and counts[1:].max() - counts[1:].min() <= 1
    everything = data.stratified_subset(labels, len(labels))
    np.testing.assert_array_equal(everything, np.arange(len(labels)))


@pytest.mark.parametrize(
    ("n", "kwargs", "error", "match"),
    [
        (53, {}, ValueError, "train_subset 53 is larger than the 52 examples"),
        (3, {}, ValueError, r"train_subset 3 is smaller than the number of classes 4"),
        (5, {"num_classes": 10}, ValueError, r"smaller than the number of classes 10"),
        (5.0, {}, TypeError, "train_subset must be an int, got 5.0"),
        (5, {"seed": "a"}, TypeError, "subset seed must be an int, got 'a'"),
    ],
)
def test_stratified_subset_rejects_bad_sizes(n, kwargs, error, match):
    labels = np.repeat(np.arange(4), 13)
    with pytest.raises(error, match=match):
        data.stratified_subset(labels, n, what="train_subset", **kwargs)


def test_load_digits_at_a_lower_resolution_with_a_stratified_subset():
    full = data.load("digits", "train")
    train = data.load("digits", "train", resolution=4, train_subset=500, subset_seed=3)
    chex.assert_shape(train.images, (500, 4, 4, 1))
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=10), [50] * 10)
    chosen = data.stratified_subset(full.labels, 500, seed=3)
    np.testing.assert_array_equal(train.images, data.downsample(full.images[chosen], 4))
    np.testing.assert_array_equal(train.labels, full.labels[chosen])
    # The subset's own statistics, after downsampling.
    assert train.mean == data.channel_stats(train.images)[0]
    assert train.std == data.channel_stats(train.images)[1]
    assert train.std[0] < full.std[0]  # 2x2 means are smoother
    again = data.load("digits", "train", resolution=4, train_subset=500, subset_seed=3)
    np.testing.assert_array_equal(again.images, train.images)
    # Resolution alone keeps every example and the full-resolution training statistics.
    test = data.load("digits", "test", resolution=4)
    chex.assert_shape(test.images, (360, 4, 4, 1))
    assert test.mean == full.mean and test.std == full.std
    assert data.load("digits", "train", resolution=8).images.shape == full.images.shape


def test_load_refuses_a_subset_of_another_split_or_of_bad_size():
    with pytest.raises(ValueError, match=r"train_subset is for the 'train' split, got 'test'"):
        data.load("digits", "test", train_subset=100)
    with pytest.raises(ValueError, match="train_subset 2000 is larger than the 1437 examples"):
        data.load("digits", "train", train_subset=2000)
    with pytest.raises(ValueError, match="train_subset 9 is smaller than the number of classes 10"):
        data.load("digits", "train", train_subset=9)
    with pytest.raises(ValueError, match="train_subset 200 is larger than the 100 examples"):
        data.load("digits", "train[:100]", train_subset=200)
    with pytest.raises(ValueError, match="resolution 3 does not divide the image height 8"):
        data.load("digits", "test", resolution=3)


def test_shrink_without_a_subset_keeps_the_statistics():
    train = data.load("digits", "train")
    small = data.shrink(train, resolution=2)
    chex.assert_shape(small.images, (1437, 2, 2, 1))
    assert small.mean == train.mean and small.name == "digits"
    assert data.shrink(train) is train


def test_load_protocol_on_digits_normalises_both_splits_with_the_subset():
    train, test = data.load_protocol("digits", resolution=4, train_subset=500, seed=1)
    chex.assert_shape(train.images, (500, 4, 4, 1))
    chex.assert_shape(test.images, (360, 4, 4, 1))
    assert (test.mean, test.std) == (train.mean, train.std) == data.channel_stats(train.images)
    plain_train, plain_test = data.load_protocol("digits", resolution=None, train_subset=None)
    assert len(plain_train) == 1437 and plain_train.image_shape == (8, 8, 1)
    assert plain_test.mean == plain_train.mean == data.load("digits", "test").mean


def test_load_protocol_on_a_tiny_npz_pack(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 10
    np.savez(
        tmp_path / "cifar10.npz",
        train_images=rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8),
        train_labels=labels,
        test_images=rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8),
        test_labels=labels[:12],
    )
    train, test = data.load_protocol(data_dir=tmp_path, resolution=4, train_subset=20)
    assert train.name == test.name == "cifar10"
    chex.assert_shape(train.images, (20, 4, 4, 3))
    chex.assert_shape(test.images, (12, 4, 4, 3))
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=10), [2] * 10)
    assert train.mean == data.channel_stats(train.images)[0] != data.NORMALIZATION["cifar10"][0]
    assert (test.mean, test.std) == (train.mean, train.std)
    with pytest.raises(ValueError, match="resolution 16 is larger than the image height 8"):
        data.load_protocol(data_dir=tmp_path, train_subset=20)  # default resolution 16
    with pytest.raises(ValueError, match="train_subset 10000 is larger than the 40 examples"):
        data.load_protocol(data_dir=tmp_path, resolution=4)  # default subset 10k


def _shared_cifar10_pack():
    repo = pathlib.Path(__file__).resolve().parents[1]
    for folder in (pathlib.Path("/work/shared/data"), repo.parent / "shared" / "data"):
        if (folder / "cifar10_jpeg.npz").is_file():
            return folder
    return None


@pytest.mark.slow
@pytest.mark.skipif(_shared_cifar10_pack() is None, reason="no cifar10_jpeg.npz here")
def test_cifar10_cpu_protocol_from_the_shared_pack():
    """Decodes the 60k JPEGs once (about 15 s): 16x16, 1,000 per class, the full test set."""
    train, test = data.load_protocol("cifar10", data_dir=_shared_cifar10_pack())
    chex.assert_shape(train.images, (10000, 16, 16, 3))
    chex.assert_shape(test.images, (10000, 16, 16, 3))
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=10), [1000] * 10)
    assert train.mean == data.channel_stats(train.images)[0] and test.mean == train.mean
    assert train.num_classes == 10 and train.class_names[0] == "airplane"


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
