"""Tests of streaming input (jnet2net.data.streaming, jnet2net.train.inputs): the same batches
as the in-memory path for each (seed, step), sharded per process, fit and resume, tfds data."""

import io

import chex
import jax
import numpy as np
import PIL.Image
import pytest
from grain import sharding
from helpers import read_scalars  # tests/ is on sys.path

from jnet2net import data, models, train
from jnet2net.data import streaming
from jnet2net.train import evaluation, inputs
from jnet2net.train.batches import augment_key, batch_indices, epoch_permutation
from jnet2net.train.loop import check_fit_inputs
from jnet2net.train.sharding import batch_sharding
from jnet2net.train.steps import augment_batch

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MODEL = models.ResNet((1,), (4,), num_classes=10)
CONFIG = train.TrainConfig(
    epochs=2,
    batch_size=32,
    learning_rate=0.05,
    warmup_epochs=0.5,
    eval_batch_size=16,
    progress=False,
)


@pytest.fixture(scope="module")
def digits():
    """96 training digits (3 steps of 32) and 40 test digits, 8x8x1."""
    return data.load("digits", "train").take(96), data.load("digits", "test").take(40)


@pytest.fixture(scope="module")
def colour():
    """40 random 8x8 RGB images in 5 classes."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    return data.from_arrays(images, np.arange(40) % 5, name="colour")


def memory_batch(dataset, seed, step, batch_size):
    """The batch the in-memory train step gathers on device for ``step``."""
    spe = len(dataset) // batch_size
    order = epoch_permutation(seed, step // spe, len(dataset))
    index = np.asarray(batch_indices(order, step % spe, batch_size))
    return dataset.images[index], dataset.labels[index]


# --- the same batches as the in-memory path ------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "step"), [(0, 0), (0, 4), (3, 7), (3, 12)])
def test_streamed_batches_equal_the_in_memory_batches(colour, seed, step):
    stream = data.stream_from_dataset(colour)
    images, labels = streaming.batch_for_step(stream, seed=seed, step=step, batch_size=8)
    want_images, want_labels = memory_batch(colour, seed, step, 8)
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(labels, want_labels)
    # Augmented on device with the step's key, both paths give the same images.
    config = CONFIG.replace(seed=seed, augment="crop_flip", crop_padding=2)
    key = augment_key(seed, step)
    chex.assert_trees_all_equal(
        augment_batch(config, key, images), augment_batch(config, key, want_images)
    )
    # Another step is another batch.
    other, _ = streaming.batch_for_step(stream, seed=seed, step=step + 1, batch_size=8)
    assert not np.array_equal(other, images)


def test_grain_pipeline_yields_each_steps_batch_and_each_process_its_rows(colour):
    stream = data.stream_from_dataset(colour)
    kwargs = {"seed": 1, "batch_size": 8, "augment": "crop_flip", "crop_padding": 2}
    full = list(streaming.local_batches(stream, start=3, stop=7, rows=(0, 8), **kwargs))
    assert len(full) == 4
    for step, (images, labels) in zip(range(3, 7), full, strict=True):
        want = streaming.batch_for_step(stream, step=step, **kwargs)
        np.testing.assert_array_equal(images, want[0])
        np.testing.assert_array_equal(labels, want[1])
    # Host augmentation changed the images, and does not depend on which process reads.
    plain = streaming.batch_for_step(stream, seed=1, step=3, batch_size=8)
    assert not np.array_equal(full[0][0], plain[0])
    np.testing.assert_array_equal(full[0][1], plain[1])
    half = list(streaming.local_batches(stream, start=3, stop=7, rows=(4, 8), **kwargs))
    for (images, labels), (want_images, want_labels) in zip(half, full, strict=True):
        np.testing.assert_array_equal(images, want_images[4:])
        np.testing.assert_array_equal(labels, want_labels[4:])


def test_stream_batches_are_global_arrays_sharded_over_the_mesh(colour):
    stream = data.stream_from_dataset(colour)
    mesh = train.data_mesh()
    assert mesh.size == 4
    with streaming.stream_batches(stream, mesh, seed=2, batch_size=8, start=5, stop=8) as it:
        got = list(it)
    assert len(got) == 3
    for step, (images, labels) in zip(range(5, 8), got, strict=True):
        assert images.sharding == batch_sharding(mesh) and images.shape == (8, 8, 8, 3)
        want = memory_batch(colour, 2, step, 8)
        np.testing.assert_array_equal(np.asarray(images), want[0])
        np.testing.assert_array_equal(np.asarray(labels), want[1])


def test_each_process_reads_its_rows_of_every_batch():
    assert streaming.shard_rows(8) == (0, 8)  # one process reads every row
    assert streaming.shard_rows(8, sharding.ShardOptions(1, 2, drop_remainder=True)) == (4, 8)
    with pytest.raises(ValueError, match="batch_size=6 must be a multiple of the 4 processes"):
        streaming.shard_rows(6, sharding.ShardOptions(0, 4))
    mesh = train.data_mesh()
    assert streaming.process_rows(mesh, 8) == (0, 8)


def test_stream_rejects_a_shard_that_the_mesh_does_not_hold(colour):
    stream = data.stream_from_dataset(colour)
    with pytest.raises(ValueError, match=r"reads rows 4..7 of each batch, but its devices hold"):
        streaming.stream_batches(
            stream,
            train.data_mesh(),
            seed=0,
            batch_size=8,
            stop=1,
            shard_options=sharding.ShardOptions(1, 2, drop_remainder=True),
        )
    with pytest.raises(TypeError, match="data must be a StreamSet, got Dataset"):
        streaming.stream_batches(colour, train.data_mesh(), seed=0, batch_size=8, stop=1)
    with pytest.raises(ValueError, match="host augment must be one of"):
        streaming.batch_for_step(stream, seed=0, step=0, batch_size=8, augment="mixup")


# --- host transforms ----------------------------------------------------------------------


def test_host_crop_flip_is_a_window_of_the_padded_image():
    image = np.arange(6 * 5 * 2, dtype=np.uint8).reshape(6, 5, 2)
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
    seen = set()
    for row in range(40):
        out = streaming.random_crop_flip(image, streaming.example_rng(0, 1, row), padding=2)
        windows = {
            (top, left, flip)
            for top in range(5)
            for left in range(5)
            for flip in (False, True)
            if np.array_equal(
                out,
                padded[top : top + 6, left : left + 5][:, ::-1]
                if flip
                else padded[top : top + 6, left : left + 5],
            )
        }
        assert windows, row
        seen |= windows
    assert len(seen) > 10 and {f for *_, f in seen} == {False, True}
    # The same (seed, step, row) draws the same crop.
    a = streaming.random_crop_flip(image, streaming.example_rng(0, 1, 3), padding=2)
    b = streaming.random_crop_flip(image, streaming.example_rng(0, 1, 3), padding=2)
    np.testing.assert_array_equal(a, b)


def test_resized_and_centre_crops_give_the_streams_shape():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
    out = streaming.random_resized_crop(image, np.random.default_rng(1), (16, 16, 3))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    centre = streaming.center_crop(image, (16, 16, 3), crop_fraction=1.0)
    assert centre.shape == (16, 16, 3)
    # The whole width is kept at crop_fraction 1: resize 20 -> 16 wide, 30 -> 24 high.
    np.testing.assert_array_equal(centre, streaming.resize(image, 24, 16)[4:20])
    grey = rng.integers(0, 256, (9, 12, 1), dtype=np.uint8)
    assert streaming.center_crop(grey, (8, 8, 1), 0.875).shape == (8, 8, 1)


# --- fit ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def memory_run(digits):
    train_set, test_set = digits
    return train.fit(MODEL, train_set, test_set, CONFIG.replace(input="memory"))


@pytest.mark.slow
def test_fit_streaming_ends_with_the_params_of_fit_in_memory(digits, memory_run):
    train_set, test_set = digits
    streamed = train.fit(MODEL, train_set, test_set, CONFIG.replace(input="stream"))
    assert [r["step"] for r in streamed.history] == [3, 6]
    # Same batches, same augmentation keys, same step function: only the way the batch
    # reaches the step differs (an argument, or a gather inside the program). With the
    # tests' XLA settings the two programs round identically; fully optimised compiles may
    # fuse differently and differ in the last bits.
    chex.assert_trees_all_equal(streamed.state.params, memory_run.state.params)
    chex.assert_trees_all_equal(streamed.state.batch_stats, memory_run.state.batch_stats)
    for a, b in zip(streamed.history, memory_run.history, strict=True):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
            assert a[key] == b[key], key


@pytest.mark.slow  # an end-to-end training run
def test_resume_with_streaming_input_equals_an_uninterrupted_run(digits, memory_run):
    train_set, test_set = digits
    config = CONFIG.replace(input="stream")
    stream = data.stream_from_dataset(train_set)
    first = train.fit(MODEL, stream, test_set, config, max_steps=4)
    saved = jax.tree.map(np.array, first.state)  # as a checkpoint would hold it
    second = train.fit(MODEL, stream, test_set, config, state=saved)
    assert [r["step"] for r in second.history] == [6]
    chex.assert_trees_all_equal(second.state.params, memory_run.state.params)
    chex.assert_trees_all_equal(second.state.opt_state, memory_run.state.opt_state)
    assert int(saved.step) == 4  # the caller's state is not consumed


@pytest.mark.slow  # an end-to-end training run
def test_streamed_run_checkpoints_and_resumes_from_orbax_to_the_memory_run(
    digits, memory_run, tmp_path
):
    from jnet2net import checkpoint

    train_set, test_set = digits
    config = CONFIG.replace(input="stream")
    saver = checkpoint.epoch_saver(tmp_path, MODEL, config.to_dict())
    first = train.fit(MODEL, train_set, test_set, config, on_epoch_end=saver, max_steps=3)
    assert checkpoint.all_steps(tmp_path) == [3]
    fresh = train.create_train_state(MODEL, config, train_set.images, steps_per_epoch=3)
    state, restored = checkpoint.restore_train_state(tmp_path, fresh, model=MODEL)
    assert restored.step == 3 and restored.train_config["input"] == "stream"
    chex.assert_trees_all_equal(state.params, first.state.params)
    second = train.fit(MODEL, train_set, test_set, config, state=state)
    chex.assert_trees_all_equal(second.state.params, memory_run.state.params)
    assert second.history[-1]["test_acc"] == memory_run.history[-1]["test_acc"]


def test_auto_input_keeps_small_sets_in_memory_and_streams_large_ones(digits, monkeypatch):
    train_set, _ = digits
    mesh = train.data_mesh()
    auto = CONFIG
    assert not inputs.streams_input(auto, train_set, mesh)
    assert inputs.streams_input(auto, data.stream_from_dataset(train_set), mesh)
    assert inputs.streams_input(auto.replace(augment="resized_crop_flip"), train_set, mesh)
    monkeypatch.setattr(inputs, "memory_budget", lambda mesh: train_set.images.nbytes - 1)
    assert inputs.streams_input(auto, train_set, mesh)
    assert not inputs.streams_input(auto.replace(input="memory"), train_set, mesh)
    with pytest.raises(ValueError, match="input='memory' needs the training set in memory"):
        inputs.streams_input(
            auto.replace(input="memory"), data.stream_from_dataset(train_set), mesh
        )
    with pytest.raises(ValueError, match="resized_crop_flip' runs on the host"):
        inputs.streams_input(
            auto.replace(input="memory", augment="resized_crop_flip"), train_set, mesh
        )
    with pytest.raises(ValueError, match=r"TrainConfig.input must be one of"):
        train.TrainConfig(input="disk")


# --- streamed evaluation -------------------------------------------------------------------


@pytest.mark.parametrize(("batch_size", "rows"), [(16, None), (12, (0, 6)), (12, (6, 12))])
def test_eval_batches_read_the_set_in_order_and_pad_the_last(digits, batch_size, rows):
    _, test_set = digits  # 40 examples: the last batch is part padding
    stream = data.stream_from_dataset(test_set)
    lo, hi = (0, batch_size) if rows is None else rows
    batches = [
        streaming.eval_batch(stream, index, batch_size, rows)
        for index in range(streaming.eval_batch_count(len(stream), batch_size))
    ]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    starts = np.arange(0, len(batches) * batch_size, batch_size)
    expected = np.concatenate([np.arange(s + lo, s + hi) for s in starts])
    inside = expected < len(test_set)
    np.testing.assert_array_equal(images[inside], test_set.images[expected[inside]])
    np.testing.assert_array_equal(labels[inside], test_set.labels[expected[inside]])
    assert (labels[~inside] == -1).all() and (images[~inside] == 0).all()
    assert images.dtype == np.uint8 and labels.dtype == np.int32


def test_streamed_evaluation_equals_in_memory_evaluation(digits):
    train_set, test_set = digits
    variables = train.init_variables(MODEL, train_set.images[:1], key=jax.random.key(3))
    memory = train.evaluate(MODEL, variables, test_set, batch_size=12)
    streamed = train.evaluate(MODEL, variables, data.stream_from_dataset(test_set), batch_size=12)
    assert streamed[1] == memory[1]  # counts of correct predictions: exact
    assert streamed[0] == pytest.approx(memory[0], rel=1e-6)
    assert 0.0 <= memory[1] <= 1.0


def test_fit_streams_a_large_test_set_and_records_what_memory_records(
    digits, memory_run, monkeypatch
):
    train_set, test_set = digits
    mesh = train.data_mesh()
    stream = data.stream_from_dataset(test_set)
    assert not inputs.streams_eval(CONFIG, stream, mesh)  # small: read into memory
    assert inputs.streams_eval(CONFIG.replace(input="stream"), stream, mesh)
    assert not inputs.streams_eval(CONFIG.replace(input="stream"), test_set, mesh)
    monkeypatch.setattr(inputs, "memory_budget", lambda mesh: test_set.images.nbytes - 1)
    assert inputs.streams_eval(CONFIG, stream, mesh)
    assert not inputs.streams_eval(CONFIG.replace(input="memory"), stream, mesh)
    seen = []
    run_stream_eval = evaluation.run_stream_eval

    def spy(step, variables, test, batch_size, mesh):
        seen.append(len(test))
        return run_stream_eval(step, variables, test, batch_size, mesh)

    monkeypatch.setattr(evaluation, "run_stream_eval", spy)
    result = train.fit(MODEL, train_set, stream, CONFIG)  # both sets stream (budget)
    assert seen == [len(test_set)] * len(memory_run.history)  # each evaluation streamed
    chex.assert_trees_all_equal(result.state.params, memory_run.state.params)
    for a, b in zip(result.history, memory_run.history, strict=True):
        assert a["test_acc"] == b["test_acc"]
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-6)


def test_evaluate_rejects_what_is_not_a_dataset_or_stream(digits):
    train_set, _ = digits
    variables = train.init_variables(MODEL, train_set.images[:1], key=jax.random.key(3))
    with pytest.raises(TypeError, match="Dataset or StreamSet, got ndarray"):
        train.evaluate(MODEL, variables, train_set.images)


# --- tfds image datasets (a tiny array_record dataset written here) -----------------------


@pytest.fixture(scope="session")
def tiny_tfds(tmp_path_factory):
    """A tfds dataset ``tiny_images`` of 64x(40..63) RGB images, 3 classes, array_record:
    ``train`` 24 records, ``validation`` 6. Session-scoped: tfds registers the builder class
    by name once per process, and a module fixture can be set up twice in one worker."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from etils import epath

    data_dir = tmp_path_factory.mktemp("tfds")

    class TinyImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        pkg_dir_path = epath.Path(data_dir)  # no metadata files beside a test module

        def _info(self):
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 3)),
                        "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
                    }
                )
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(24), "validation": self._generate_examples(6)}

        def _generate_examples(self, n):
            rng = np.random.default_rng(n)
            for i in range(n):
                image = rng.integers(0, 256, (64, 40 + i, 3), dtype=np.uint8)
                png = io.BytesIO()
                PIL.Image.fromarray(image).save(png, format="PNG")  # tfds would need TF
                yield i, {"image": png.getvalue(), "label": i % 3}

    TinyImages(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return data_dir


def test_tfds_dataset_streams_and_loads_at_a_chosen_resolution(tiny_tfds):
    stream = data.stream("tiny_images", "train", data_dir=tiny_tfds, image_size=16)
    assert len(stream) == 24 and stream.image_shape == (16, 16, 3) and stream.num_classes == 3
    assert stream.class_names == ("a", "b", "c")
    assert len(stream.mean) == 3 and 100 < stream.mean[0] < 155  # uniform pixels
    loaded = data.load("tiny_images", "validation", data_dir=tiny_tfds, image_size=16)
    assert loaded.images.shape == (6, 16, 16, 3) and sorted(loaded.labels) == [0, 0, 1, 1, 2, 2]
    val = data.stream("tiny_images", "validation", data_dir=tiny_tfds, image_size=16)
    np.testing.assert_array_equal(val.to_dataset().images, loaded.images)
    assert val.mean == stream.mean and loaded.std == stream.std  # the train split's stats
    images, labels = streaming.batch_for_step(
        stream, seed=0, step=1, batch_size=8, augment="resized_crop_flip"
    )
    assert images.shape == (8, 16, 16, 3) and labels.shape == (8,)
    with pytest.raises(ValueError, match=r"images of varying size .* pass image_size="):
        data.stream("tiny_images", "train", data_dir=tiny_tfds)
    for name in ("no_such_set", "no_such_set/config:1.0.0", "a b"):
        with pytest.raises(ValueError, match=f"unknown dataset '{name}'; known datasets: digits"):
            data.stream(name, "train", data_dir=tiny_tfds)


@pytest.mark.slow
def test_fit_streams_a_tfds_dataset_with_random_resized_crops(tiny_tfds):
    stream = data.stream("tiny_images", "train", data_dir=tiny_tfds, image_size=32)
    val = data.stream("tiny_images", "validation", data_dir=tiny_tfds, image_size=32)
    model = models.ResNet((1,), (4,), num_classes=3, stem="imagenet")  # 7x7/2, pool /2
    config = CONFIG.replace(batch_size=8, epochs=1, augment="resized_crop_flip")
    result = train.fit(model, stream, val, config, max_steps=2)
    assert [r["step"] for r in result.history] == [2]
    assert np.isfinite(result.history[0]["train_loss"]) and result.history[0]["test_acc"] >= 0


def test_stream_protocol_pairs_train_with_the_evaluation_split(tiny_tfds):
    train_set, test_set = data.stream_protocol("tiny_images", data_dir=tiny_tfds, image_size=16)
    assert (len(train_set), len(test_set)) == (24, 6)  # no 'test' split: 'validation'
    assert test_set.mean == train_set.mean and test_set.std == train_set.std


@pytest.mark.slow
def test_the_train_command_streams_a_tfds_dataset(tiny_tfds, tmp_path, capsys):
    from jnet2net import checkpoint, cli

    run = tmp_path / "run"
    args = ["train", "--dataset", "tiny_images", "--data-dir", str(tiny_tfds), "--out", str(run)]
    args += ["--input", "stream", "--resolution", "16", "--arch", "resnet20"]
    args += ["--arch-json", '{"stage_depths": [1], "stage_widths": [4]}', "--batch-size", "8"]
    board = ["--tensorboard", str(tmp_path / "tb")]
    assert cli.main([*args, *board, "--epochs", "1", "--no-progress"]) == 0
    info = checkpoint.checkpoint_info(run)
    assert info.step == 3 and info.train_config["input"] == "stream"
    (record,) = train.read_jsonl(run / "metrics.jsonl")
    assert record["test_acc"] in {k / 6 for k in range(7)}  # the 6 validation records
    out = capsys.readouterr().out
    assert f"summary: 1 epochs (3 steps), test acc {record['test_acc']:.3f} at the end" in out
    assert read_scalars(tmp_path / "tb")["test/accuracy"] == [
        (3, pytest.approx(record["test_acc"]))
    ]
    capsys.readouterr()
    subset = ["--epochs", "1", "--train-subset", "12", "--out", str(tmp_path / "b")]
    assert cli.main([*args, *subset]) == 2
    assert "--train-subset picks an in-memory subset" in capsys.readouterr().err


@pytest.mark.slow
def test_growth_events_and_records_are_the_same_with_streaming_input(digits):
    train_set, _ = digits
    model = models.ResNet((1,), (3,), num_classes=10)
    growth = (train.Grow(1, widths=(5,)),)
    runs = {  # the streamed run compiles the grown step in the background
        kind: train.fit(
            model,
            train_set,
            None,
            CONFIG.replace(input=kind),
            growth=growth,
            precompile=kind == "stream",
        )
        for kind in ("memory", "stream")
    }
    memory, streamed = runs["memory"], runs["stream"]
    assert streamed.model == memory.model and streamed.model.stage_widths == (5,)
    chex.assert_trees_all_equal(streamed.state.params, memory.state.params)
    for a, b in zip(streamed.history, memory.history, strict=True):
        assert set(a) == set(b)
        # Times differ; FLOPs by the in-memory step's gather (a few hundred in millions).
        same = [k for k in a if not k.endswith(("_s", "flops")) and k != "images_per_s"]
        assert {k: a[k] for k in same} == {k: b[k] for k in same}
        assert a["step_flops"] == pytest.approx(b["step_flops"], rel=1e-3)
    assert [r.get("event") for r in streamed.history] == [None, "grow", None]


def test_stream_sets_reject_bad_fields(colour):
    source = streaming.ArraySource(colour.images, colour.labels)
    good = {"num_classes": 5, "name": "c", "mean": (1.0,) * 3, "std": (1.0,) * 3}
    with pytest.raises(ValueError, match=r"image_shape must be \(h, w, c\) positive"):
        data.StreamSet(source, image_shape=(8, 8), **good)
    with pytest.raises(ValueError, match=r"need 3 entries \(image_shape \(8, 8, 3\)\)"):
        data.StreamSet(source, image_shape=(8, 8, 3), **{**good, "mean": (1.0,)})
    with pytest.raises(ValueError, match=r"crop_fraction must lie in \(0, 1\]"):
        data.StreamSet(source, image_shape=(8, 8, 3), crop_fraction=0.0, **good)
    with pytest.raises(TypeError, match="source must support len"):
        data.StreamSet(object(), image_shape=(8, 8, 3), **good)
    with pytest.raises(ValueError, match="image_size must be an int >= 1 or None, got 0"):
        data.stream("cifar10", "train", image_size=0)
    with pytest.raises(TypeError, match=r"train must be a jnet2net.data.Dataset, got StreamSet"):
        check_fit_inputs(MODEL, data.stream_from_dataset(colour), None, CONFIG)


def test_batches_read_in_chunks_equal_batches_read_whole(colour, monkeypatch):
    assert [streaming.chunk_size(b) for b in (96, 100, 7, 37, 128)] == [32, 25, 7, 1, 32]
    stream = data.stream_from_dataset(colour)
    kwargs = {"seed": 4, "batch_size": 8, "augment": "crop_flip", "crop_padding": 2}
    monkeypatch.setattr(streaming, "CHUNK", 3)  # 8 rows: 4 chunks of 2
    got = list(streaming.local_batches(stream, start=0, stop=6, rows=(0, 8), **kwargs))
    assert len(got) == 6
    for step, (images, labels) in enumerate(got):
        want = streaming.batch_for_step(stream, step=step, **kwargs)
        np.testing.assert_array_equal(images, want[0])
        np.testing.assert_array_equal(labels, want[1])
