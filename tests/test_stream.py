"""The streaming path without Ray: labels read once, splits and fractions by row id, the pipeline's read function,
memory that does not grow with the dataset, and the choice between memory and streaming."""

from __future__ import annotations

import functools
import io
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tlsearch import data, loading, stream
from tlsearch.errors import ConfigError, DataError


def png(value: int, size: int = 20, gray: bool = False) -> bytes:
    from PIL import Image

    pixels = np.full((size, size) if gray else (size, size, 3), value, dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def write_parquet_images(folder: Path, rows: int, size: int = 20, classes: int = 3, group: int = 64,
                         files: tuple[str, ...] = ("train-0.parquet",), noise: bool = False,
                         jpeg: bool = False) -> Path:
    """``rows`` images (pixel value = row id mod 256, or noise; as JPEG: a class-coloured gradient with noise, small
    on disk) labelled ``c{row mod classes}``, Hugging Face's ``{bytes, path}`` struct, spread evenly over
    ``files`` in row groups of ``group``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 1, size)[None, :, None] * np.linspace(0, 1, size)[:, None, None]

    def blob(i: int) -> bytes:
        if not (noise or jpeg):
            return png(i % 256, size)
        out = io.BytesIO()
        if jpeg:
            colour = np.eye(3)[i % classes] * 200 * ramp + rng.normal(0, 20, (size, size, 3))
            Image.fromarray(np.clip(colour, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=80)
        else:
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(out, format="PNG")
        return out.getvalue()

    table = pa.table({"image": [{"bytes": blob(i), "path": f"{i}.png"} for i in range(rows)],
                      "label": [f"c{i % classes}" for i in range(rows)]})
    per_file = -(-rows // len(files))
    for k, name in enumerate(files):
        pq.write_table(table.slice(k * per_file, per_file), folder / name, row_group_size=group)
    return folder


@pytest.fixture
def parquet_set(tmp_path: Path) -> Path:
    return write_parquet_images(tmp_path / "pq", 300, files=("train-0.parquet", "train-1.parquet", "test-0.parquet"))


def test_scan_reads_labels_and_splits_like_the_in_memory_path(parquet_set: Path) -> None:
    found = loading.scan(str(parquet_set), 3, 16)
    decoded = data.load(str(parquet_set))
    assert found.classes == decoded.classes == ("c0", "c1", "c2")
    np.testing.assert_array_equal(found.labels, decoded.labels)
    np.testing.assert_array_equal(found.split, decoded.split)
    assert found.source.groups == ((64, 36), (64, 36), (64, 36))
    memory = data.three_way_split(decoded, val_size=40, test_size=0.2, seed=3)
    streamed = data.split_rows(found.labels, found.split, val_size=40, test_size=0.2, seed=3)
    for a, b in zip((memory.pool, memory.val, memory.test), (streamed.pool, streamed.val, streamed.test),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_rows_are_read_by_id_across_files_and_row_groups(parquet_set: Path) -> None:
    found = loading.scan(str(parquet_set), 3, 16)
    decoded = data.load(str(parquet_set))
    ids = np.array([0, 63, 64, 99, 100, 170, 299])
    images, labels = zip(*stream.local_batches(found.source, ids, found.labels, batch_size=3), strict=True)
    x, y = np.concatenate(images), np.concatenate(labels)
    assert x.shape == (7, 3, 16, 16) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[:, 0, 0, 0], decoded.images[ids, 0, 0, 0])  # the very same rows
    np.testing.assert_array_equal(y, decoded.labels[ids])


def test_nested_fractions_by_row_id_never_touch_validation_or_test(parquet_set: Path) -> None:
    found = loading.scan(str(parquet_set), 3, 16)
    splits = data.split_rows(found.labels, found.split, val_size=40, test_size=0.2, seed=0)
    small, large = (data.nested_fraction(found.labels, splits.pool, f, 0) for f in (0.1, 0.5))
    assert set(small) <= set(large) <= set(splits.pool)
    assert not set(large) & (set(splits.val) | set(splits.test))
    chunks = stream.chunks(found.source, large, found.labels)
    assert sorted(r for c in chunks for r in c["ids"]) == sorted(large)
    assert all(len(c["paths"]) == 1 and len(set(np.searchsorted(np.cumsum(c["groups"]), c["positions"],
                                                                side="right"))) == 1 for c in chunks)


def test_image_folder_scan(tmp_path: Path) -> None:
    for split, count in (("train", 5), ("test", 2)):
        for cls in ("cat", "dog"):
            folder = tmp_path / "tree" / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                (folder / f"{i}.png").write_bytes(png(10 * i, gray=True))
    found = loading.scan(str(tmp_path / "tree"), 1, 8)
    assert found.classes == ("cat", "dog") and len(found) == 14
    assert found.split is not None
    np.testing.assert_array_equal(np.bincount(found.split), [10, 0, 4])
    x, y = next(iter(stream.local_batches(found.source, np.arange(14), found.labels, 14)))
    assert x.shape == (14, 1, 8, 8)
    np.testing.assert_array_equal(y, found.labels)


def test_parquet_and_image_folder_stream_from_s3(tmp_path: Path, parquet_set: Path, s3_uri: str) -> None:
    from tlsearch import storage

    remote = storage.join(s3_uri, "stream-data")
    storage.upload_dir(parquet_set, remote)
    local, found = loading.scan(str(parquet_set), 3, 16), loading.scan(remote, 3, 16)
    assert all(f.startswith("s3://bucket/") and "endpoint_override" in f for f in found.source.files)
    np.testing.assert_array_equal(found.labels, local.labels)
    np.testing.assert_array_equal(found.split, local.split)
    ids = np.array([1, 70, 250])
    (x, y), = stream.local_batches(found.source, ids, found.labels, 8)
    (x0, y0), = stream.local_batches(local.source, ids, local.labels, 8)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
    tree = tmp_path / "tree"
    for cls in ("a", "b"):
        (tree / cls).mkdir(parents=True)
        (tree / cls / "0.png").write_bytes(png(50 if cls == "a" else 150))
    storage.upload_dir(tree, storage.join(s3_uri, "stream-tree"))
    images = loading.scan(storage.join(s3_uri, "stream-tree"), 3, 8)
    (x, y), = stream.local_batches(images.source, np.arange(2), images.labels, 8)
    assert images.classes == ("a", "b") and x[:, 0, 0, 0].tolist() == [50, 150] and y.tolist() == [0, 1]
    assert loading.choose_loading("auto", remote, len(found), 3, 16, available=1 << 40) == "stream"


def test_unreadable_image_names_its_row(tmp_path: Path) -> None:
    write_parquet_images(tmp_path / "pq", 6)
    table = pq.read_table(tmp_path / "pq" / "train-0.parquet")
    broken = table.set_column(0, "image", pa.array([{"bytes": b"not an image", "path": "x"}] * 6))
    pq.write_table(broken, tmp_path / "pq" / "train-0.parquet")
    found = loading.scan(str(tmp_path / "pq"), 3, 8)
    with pytest.raises(DataError, match="unreadable image row 2"):
        list(stream.local_batches(found.source, np.array([2]), found.labels, 1))


def _read_all(found: loading.Scan) -> None:
    """Every row through the pipeline's read function, a batch at a time, as a worker iterates its shard."""
    for x, _ in stream.local_batches(found.source, np.arange(len(found)), found.labels, batch_size=32):
        assert x.shape[1:] == (3, 48, 48)


def _peak(fn: Callable[[], object]) -> int:
    """Peak bytes Python allocated (numpy arrays included) while ``fn`` ran."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_streamed_memory_does_not_grow_with_the_dataset(tmp_path: Path) -> None:
    """Peak memory of iterating every row of a set 4x larger stays the same streamed; decoded, it grows 4x."""
    peaks = {}
    for rows in (256, 1024):
        folder = write_parquet_images(tmp_path / str(rows), rows, size=48, group=32, noise=True)
        iterate = functools.partial(_read_all, loading.scan(str(folder), 3, 48))
        iterate()  # imports and caches (PIL's plugins, pyarrow) once, outside the measure
        peaks[rows] = (_peak(iterate), _peak(functools.partial(data.load, str(folder))))
    (small_stream, small_memory), (large_stream, large_memory) = peaks[256], peaks[1024]
    assert large_memory > 3 * small_memory  # the measure sees a dataset held in memory
    assert large_stream < 1.25 * small_stream, peaks


def test_auto_keeps_small_data_in_memory_and_streams_the_rest() -> None:
    assert loading.choose_loading("auto", "/data", 1000, 3, 32, available=10 << 30) == "memory"
    assert loading.choose_loading("auto", "/data", 1_200_000, 3, 224, available=64 << 30) == "stream"
    assert loading.choose_loading("memory", "/data", 1_200_000, 3, 224, available=1) == "memory"
    assert loading.choose_loading("auto", "digits", 0, 3, 32, available=1) == "memory"
    assert loading.choose_loading("auto", "s3://bucket/set", 10, 3, 32, available=10 << 30) == "stream"
    with pytest.raises(DataError, match="built-in digits"):
        loading.choose_loading("stream", "digits", 0, 3, 32, available=1)
    with pytest.raises(DataError, match="remote dataset"):
        loading.choose_loading("memory", "gs://bucket/set", 0, 3, 32, available=1)


def test_config_refuses_unknown_loading_and_augment() -> None:
    from tlsearch.config import SearchConfig

    with pytest.raises(ConfigError, match="data_loading: got 'disk'; valid: auto, memory, stream"):
        SearchConfig(data_loading="disk")
    with pytest.raises(ConfigError, match="augment: got 'heavy'; valid: none, light, strong"):
        SearchConfig(augment="heavy")


@pytest.mark.slow
def test_search_streams_a_set_larger_than_the_object_store(tmp_path: Path) -> None:
    """~300 MB of decoded images (2,000 at 3 x 224 x 224) searched with a 100 MB object store, beside an in-memory
    search of a small set: both complete with the same tables; only the streamed one could hold its data."""
    import ray

    from tlsearch.config import build_config
    from tlsearch.search import run_search
    from tlsearch.search.session import _stay_on_loopback

    big = write_parquet_images(tmp_path / "big", 2000, size=224, group=100, jpeg=True,
                               files=("train-0.parquet", "train-1.parquet", "test-0.parquet"))
    small = write_parquet_images(tmp_path / "small", 300, size=32, jpeg=True)
    assert stream.decoded_bytes(2000, 3, 224) > 3 * CAP
    _stay_on_loopback()
    ray.init(num_cpus=2, object_store_memory=CAP, include_dashboard=True, dashboard_host="127.0.0.1",
             _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        rows = {}
        for name, folder, size, loading in (("memory", small, 32, "memory"), ("stream", big, 224, "stream")):
            config = build_config(
                None, dataset=str(folder), model="test_resnet", init="scratch", trials=2, max_epochs=2,
                grace_period=2, image_size=size, name=name, results_dir=str(tmp_path / "results"),
                data_fraction="0.1,0.2", val_size=100, batch_size=16, data_loading=loading, augment="light",
            )
            outcome = run_search(config, echo=lambda _: None)
            rows[name] = outcome.tables
        memory, streamed = rows["memory"], rows["stream"]
        for table in ("experiments", "trials", "epochs"):
            assert memory[table].schema == streamed[table].schema
        trials = streamed["trials"].to_pylist()
        assert [t["status"] for t in trials] == ["completed"] * 2, [t["error"] for t in trials]
        assert {t["data_loading"] for t in trials} == {"stream"}
        assert {t["data_loading"] for t in memory["trials"].to_pylist()} == {"memory"}
        assert {t["augment"] for t in trials} == {t["augment"] for t in memory["trials"].to_pylist()} == {"light"}
        for t in trials:
            assert t["best_val_acc"] is not None and t["samples_seen"] == 2 * (t["train_size"] // 16 * 16)
        assert any(t["test_acc"] is not None for t in trials)
        columns_set = {table: {k for k, v in rows["memory"][table].to_pylist()[0].items() if v is not None}
                       for table in ("trials", "epochs")}
        for table, present in columns_set.items():
            assert present <= {k for k, v in streamed[table].to_pylist()[0].items() if v is not None}, table
        experiment = streamed["experiments"].to_pylist()[0]
        print(f"streamed search: {experiment['wall_s']:.0f} s for {experiment['train_pool_size']} pool images "
              f"({stream.decoded_bytes(2000, 3, 224) / 1e6:.0f} MB decoded) with a {CAP / 1e6:.0f} MB object store")
    finally:
        ray.shutdown()


CAP = 100 * 1000 * 1000


class _FakeShard:
    """What StreamBatches asks of a Ray Data shard: ``iter_torch_batches``, recorded."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.calls: list[dict[str, Any]] = []

    def iter_torch_batches(self, **kwargs: Any) -> Iterator[dict[str, torch.Tensor]]:
        self.calls.append(kwargs)
        size = int(kwargs["batch_size"])
        for start in range(0, self.rows - (self.rows % size if kwargs["drop_last"] else 0), size):
            ids = torch.arange(start, min(start + size, self.rows))
            yield {"image": torch.zeros(len(ids), 1, 2, 2, dtype=torch.uint8), "label": ids % 2, "row": ids}


@pytest.mark.parametrize(("rows", "world", "steps", "drop"), [(100, 1, 3, True), (100, 2, 1, True), (20, 2, 1, False)])
def test_training_shards_take_the_steps_the_in_memory_path_takes(rows: int, world: int, steps: int,
                                                                 drop: bool) -> None:
    shard = _FakeShard(rows // world)
    batches = stream.StreamBatches(shard, rows, 32, world=world, shuffle=True, seed=7)
    assert len(batches) == steps
    assert len(list(batches)) == steps and len(list(batches)) == steps
    first, second = shard.calls
    assert first["drop_last"] is drop and first["local_shuffle_buffer_size"] == stream.SHUFFLE_BUFFER
    assert first["local_shuffle_seed"] != second["local_shuffle_seed"]  # reshuffled every epoch
    batches.sampler.set_epoch(0)
    list(batches)
    assert shard.calls[2]["local_shuffle_seed"] == first["local_shuffle_seed"]  # an epoch's order is its own


def test_validation_shares_are_unshuffled_and_keep_every_row() -> None:
    shard = _FakeShard(45)
    batches = stream.StreamBatches(shard, 45, 16)
    assert len(batches) == 3 and sum(len(y) for _, y in batches) == 45
    assert batches.sampler.last == list(range(45))
    assert "local_shuffle_seed" not in shard.calls[0] and shard.calls[0]["drop_last"] is False


@pytest.mark.slow
def test_two_workers_stream_disjoint_equal_shards_and_count_each_validation_image_once(tmp_path: Path) -> None:
    import json
    import os

    import ray

    from tlsearch.config import build_config
    from tlsearch.search import run_search, start_ray
    from tlsearch.worker import DEBUG_ENV

    folder = write_parquet_images(tmp_path / "pq", 240, size=24, jpeg=True)
    records = tmp_path / "records"
    os.environ[DEBUG_ENV] = str(records)  # before Ray starts: its workers inherit it
    start_ray(num_cpus=2)
    try:
        config = build_config(
            None, dataset=str(folder), model="test_resnet", init="scratch", trials=1, max_epochs=2, grace_period=2,
            image_size=24, name="ddp", results_dir=str(tmp_path / "results"), data_fraction="0.5", val_size=40,
            batch_size=16, data_loading="stream", num_workers=2,
        )
        outcome = run_search(config, echo=lambda _: None)
    finally:
        ray.shutdown()
        del os.environ[DEBUG_ENV]
    trial = outcome.tables["trials"].to_pylist()[0]
    assert trial["status"] == "completed" and trial["data_loading"] == "stream", trial["error"]
    ranks = [json.loads(p.read_text()) for p in sorted(records.glob("*-rank*.json"))]
    assert [(r["rank"], r["world"]) for r in ranks] == [(0, 2), (1, 2)]
    n_val = outcome.tables["experiments"].to_pylist()[0]["val_size"]
    for epoch in (0, 1):
        train = [r["epochs"][epoch]["train"] for r in ranks]
        val = [r["epochs"][epoch]["val"] for r in ranks]
        assert len(train[0]) == len(train[1]) == trial["train_size"] // 2 // 16 * 16  # the same steps
        assert not set(train[0]) & set(train[1])
        assert not set(val[0]) & set(val[1]) and len(val[0]) + len(val[1]) == n_val
        assert not (set(train[0]) | set(train[1])) & (set(val[0]) | set(val[1]))
        assert ranks[0]["epochs"][epoch]["val_images"] == n_val  # all-reduced: each image once
    assert ranks[0]["epochs"][0]["train"] != ranks[0]["epochs"][1]["train"]  # reshuffled


@pytest.mark.slow
def test_streamed_linear_probes_share_one_feature_pass(tmp_path: Path, ray_2_cpus: None) -> None:
    """Two probe trials on one streamed subset: the first streams the images through the frozen part once and
    stores the features, the second reads them (``hit``); the pass is charged to both."""
    from tlsearch import pretrain
    from tlsearch.config import build_config
    from tlsearch.search import run_search

    weights = tmp_path / "source.safetensors"
    pretrain("digits-split", "test_resnet", weights, epochs=1, image_size=24, echo=lambda _: None)
    folder = write_parquet_images(tmp_path / "pq", 240, size=24, jpeg=True)
    config = build_config(
        None, dataset=str(folder), model="test_resnet", weights=str(weights), trials=2, max_epochs=2,
        name="probe", results_dir=str(tmp_path / "results"), init="pretrained", freeze_depth="5", head_lr="3e-2",
        data_fraction="0.5", val_size=40, batch_size=16, data_loading="stream", augment="light", max_concurrent=1,
    )
    trials = run_search(config, echo=lambda _: None, verbose=0).tables["trials"].to_pylist()
    assert [t["status"] for t in trials] == ["completed"] * 2, [t["error"] for t in trials]
    assert {t["data_loading"] for t in trials} == {"stream"}
    assert {t["augment"] for t in trials} == {"none"}  # features of un-augmented images
    miss, hit = sorted(trials, key=lambda t: t["feature_cache"] == "hit")
    assert (miss["feature_cache"], hit["feature_cache"]) == ("miss", "hit")
    assert miss["flops_per_sample"] == hit["flops_per_sample"] < 1e5  # the classifier alone
    assert miss["shared_device_s"] == pytest.approx(hit["shared_device_s"]) and hit["shared_device_s"] > 0
    stored = sorted(p.parent.name.split("-")[0] for p in (tmp_path / "results").rglob("features.npy"))
    assert stored == ["train", "val"]  # one pass each, kept under the search's Ray storage
