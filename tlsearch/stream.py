"""Streaming: the target's images stay where they are (local disk, NFS, ``s3://``, ``gs://``) and Ray Data reads,
decodes and transforms each Train worker's shard while it trains, so no process holds the dataset.

* **Labels once.** :func:`tlsearch.loading.scan` reads only the label (and ``split``) column of a Parquet set,
  or lists an ImageFolder tree, and numbers the rows 0..N-1 in file order. The three splits and every nested,
  stratified data fraction are cut from those labels by row id, exactly as the in-memory path cuts them
  (:func:`tlsearch.data.split_rows`, :func:`tlsearch.data.nested_fraction`).
* **The pipeline.** :func:`dataset` turns a set of row ids into blocks of rows that share a Parquet row group (or
  of image files), ``ray.data.from_items`` over those small descriptions, then ``map_batches(read_rows)``: read
  the image bytes of just those rows through ``pyarrow.fs`` (:mod:`tlsearch.storage`), decode, match the model's
  channels, resize (or augment: :mod:`tlsearch.augment`) to uint8 C x H x W. ``ray.data.read_parquet`` is not used
  because it numbers no rows (its ``row_hash`` is a hash, not a position) and a nested fraction must pick exact
  rows; reading by row group is what it does inside anyway. A block holds at most :data:`BLOCK_BYTES` of decoded
  images, so a worker's memory depends on the batch and block sizes, not on the dataset's.
* **Per worker.** A trial's training subset is one dataset handed to its ``TorchTrainer``; each worker iterates
  its shard (``ray.train.get_dataset_shard("train")``, equal shards, shuffled within a buffer reseeded every
  epoch). Validation (and, for ``tlsearch confirm``, test) rows are dealt ``rank, rank + world, ...`` and each
  worker streams its own share, unpadded, so every image is counted once. A search's trials never get test rows.
* **Linear probes** train their classifier on frozen features, computed once per (model, depth, subset) and
  validation (model, depth) as in memory (:mod:`tlsearch.features`): the first trial to claim a key from the
  search's ``FeatureCache`` streams those rows, un-augmented, through the frozen part batch by batch, appending
  each batch to NumPy files in ``<Ray storage>/features/<key>/`` (``RESULTS/NAME/_ray/features``; ``features.npy``
  float32 N x D and ``rows.npy``). The cache then holds that folder and the pass's cost; later trials (or workers)
  with the key wait for it and read features, not images (:func:`cached_features`). Memory while computing is one
  batch, whatever the number of rows; a trial then holds its subset's features (D floats an image, not C x H x W
  bytes). Augmentation never applies to cached features. ``tlsearch confirm`` (no cache) runs the whole model.

The decode tasks ask the scheduler for no CPU (``num_cpus=0``, at most :data:`DECODE_TASKS` at once per dataset): a
search hands every CPU to its trials' workers, and a worker waiting for its next batch leaves its CPU to them.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tlsearch import storage
from tlsearch.errors import DataError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tlsearch.config import Hyper
    from tlsearch.feature_cache import Pass
    from tlsearch.inputs import Payload, TrialInputs
    from tlsearch.spec import InputSpec, TrialSpec

BLOCK_BYTES = 8 << 20  # decoded images per block (and per read task) at most
DECODE_TASKS = 2  # decode tasks of one dataset at once
SHUFFLE_BUFFER = 1024  # rows a training shard is shuffled within, reseeded every epoch


@dataclass(frozen=True)
class StreamSource:
    """Where the target's images are and how to read them; row ids number the rows 0..N-1 in file order.

    Torch-free and holds no image: it travels with every trial.
    """

    kind: str  # parquet | images
    files: tuple[str, ...]  # Parquet files or image files, as paths or URIs
    groups: tuple[tuple[int, ...], ...]  # Parquet: the rows of each row group of each file; images: ()
    image_column: str
    in_chans: int
    size: int

    @functools.cached_property
    def offsets(self) -> np.ndarray:
        """The first row id of each file (and N at the end)."""
        counts = [sum(g) for g in self.groups] if self.kind == "parquet" else [1] * len(self.files)
        return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])


def decoded_bytes(rows: int, in_chans: int, size: int) -> int:
    """What ``rows`` images take decoded at the model's input (uint8)."""
    return rows * in_chans * size * size


def chunks(source: StreamSource, ids: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
    """``ids`` (with their ``labels``) as read tasks: rows of one Parquet row group (or image files), at most
    :data:`BLOCK_BYTES` decoded each, in row-id order."""
    ids = np.sort(np.asarray(ids, dtype=np.int64))
    per_block = max(1, BLOCK_BYTES // decoded_bytes(1, source.in_chans, source.size))
    file_of = np.searchsorted(source.offsets, ids, side="right") - 1
    out: list[dict[str, Any]] = []
    if source.kind == "images":
        for start in range(0, len(ids), per_block):
            part = ids[start:start + per_block]
            out.append({"paths": [source.files[i] for i in file_of[start:start + per_block]], "positions": [],
                        "groups": [], "ids": part.tolist(), "labels": labels[part].tolist()})
        return out
    for f in np.unique(file_of):
        positions = ids[file_of == f] - source.offsets[f]
        bounds = np.cumsum(source.groups[f])
        group_of = np.searchsorted(bounds, positions, side="right")
        for g in np.unique(group_of):
            mine = positions[group_of == g]
            for start in range(0, len(mine), per_block):
                part = mine[start:start + per_block]
                rows = part + source.offsets[f]
                out.append({"paths": [source.files[f]], "positions": part.tolist(), "groups": list(source.groups[f]),
                            "ids": rows.tolist(), "labels": labels[rows].tolist()})
    return out


def read_rows(batch: dict[str, np.ndarray], image_column: str, in_chans: int, size: int, augment: str,
              mean: Sequence[float] = (), std: Sequence[float] = ()) -> dict[str, np.ndarray]:
    """The pipeline's ``map_batches`` function: read tasks in, decoded rows out (``image`` uint8 N x C x H x W,
    ``label``, ``row``). Training rows are augmented here (``augment``), per image."""
    images, labels, rows = [], [], []
    for i in range(len(batch["ids"])):
        blobs = _blobs(batch, i, image_column)
        for blob, row in zip(blobs, batch["ids"][i], strict=True):
            images.append(decode(blob, in_chans, size, augment, tuple(mean), tuple(std), f"row {row}"))
        labels.append(np.asarray(batch["labels"][i], dtype=np.int64))
        rows.append(np.asarray(batch["ids"][i], dtype=np.int64))
    empty = np.zeros((0, in_chans, size, size), dtype=np.uint8)
    return {"image": np.stack(images) if images else empty, "label": np.concatenate(labels),
            "row": np.concatenate(rows)}


def _blobs(batch: dict[str, np.ndarray], i: int, image_column: str) -> list[bytes]:
    """The encoded images of read task ``i``: its files, or its rows of one Parquet file's row group."""
    paths = [str(p) for p in batch["paths"][i]]
    if len(batch["groups"][i]) == 0:
        return [_read_file(p) for p in paths]
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, inner = storage.filesystem(paths[0])
    positions = np.asarray(batch["positions"][i], dtype=np.int64)
    bounds = np.concatenate([[0], np.cumsum(np.asarray(batch["groups"][i], dtype=np.int64))])
    group = int(np.searchsorted(bounds, positions[0], side="right") - 1)
    with fs.open_input_file(inner) as fh:
        column = pq.ParquetFile(fh).read_row_group(group, columns=[image_column]).column(0).combine_chunks()
    if pa.types.is_struct(column.type):
        column = column.field("bytes")
    return column.take(pa.array(positions - bounds[group])).to_pylist()


def _read_file(uri: str) -> bytes:
    blob = storage.read_bytes(uri)
    if blob is None:
        raise DataError(f"image {uri}: not found (removed after the search started?)")
    return blob


def decode(blob: bytes, in_chans: int, size: int, augment: str = "none", mean: tuple[float, ...] = (),
           std: tuple[float, ...] = (), where: str = "") -> np.ndarray:
    """One encoded image as the model's uint8 C x size x size: gray or RGB as the model takes it, resized, or
    through the training augmentation."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as opened:
            image = opened.convert("L" if in_chans == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"unreadable image {where}: {exc}") from None
    transform = _transform(augment, in_chans, size, mean, std)
    if transform is not None:
        return transform(image).numpy()
    resized = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return resized[None] if resized.ndim == 2 else resized.transpose(2, 0, 1)


@functools.lru_cache(maxsize=8)
def _transform(augment: str, in_chans: int, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    """The training transform, built once per process (a decode task runs many read tasks)."""
    from tlsearch.augment import train_transform
    from tlsearch.spec import InputSpec

    return train_transform(augment, InputSpec(in_chans, size, mean or (0.5,) * in_chans, std or (0.5,) * in_chans))


def dataset(source: StreamSource, ids: np.ndarray, labels: np.ndarray, augment: str = "none",
            spec: InputSpec | None = None) -> Any:
    """A Ray Data dataset of the rows ``ids``: decoded (and, for training, augmented) inside the pipeline."""
    import ray.data

    items = chunks(source, ids, labels)
    kwargs = {"image_column": source.image_column, "in_chans": source.in_chans, "size": source.size,
              "augment": augment, "mean": spec.mean if spec else (), "std": spec.std if spec else ()}
    read: Any = read_rows  # Ray's UDF annotation knows no keyword arguments
    return ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        read, fn_kwargs=kwargs, batch_size=1, batch_format="numpy", num_cpus=0, concurrency=DECODE_TASKS)


def local_batches(source: StreamSource, ids: np.ndarray, labels: np.ndarray, batch_size: int,
                  augment: str = "none", spec: InputSpec | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The pipeline's rows, read in this process without Ray (the driver's test scoring, tests): one read task
    at a time, so memory stays at a task's block whatever the number of rows."""
    mean, std = (spec.mean, spec.std) if spec else ((), ())
    pending_x: list[np.ndarray] = []
    pending_y: list[np.ndarray] = []
    for item in chunks(source, ids, labels):
        batch = {k: np.array([v], dtype=object) for k, v in item.items()}
        out = read_rows(batch, source.image_column, source.in_chans, source.size, augment, mean, std)
        pending_x.append(out["image"])
        pending_y.append(out["label"])
        while sum(len(y) for y in pending_y) >= batch_size:
            x, y = np.concatenate(pending_x), np.concatenate(pending_y)
            yield x[:batch_size], y[:batch_size]
            pending_x, pending_y = [x[batch_size:]], [y[batch_size:]]
    if pending_y and sum(len(y) for y in pending_y):
        yield np.concatenate(pending_x), np.concatenate(pending_y)


class StreamOrder:
    """What the worker expects of a loader's sampler: ``set_epoch`` (reseeds the shuffle buffer) and ``last``
    (the row ids of the latest pass, in order)."""

    def __init__(self, seed: int) -> None:
        self.seed, self.epoch = seed, 0
        self.last: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class StreamBatches:
    """A worker's batches from a Ray Data shard or dataset: (uint8 images, labels) on the CPU (pinned on GPUs, so
    the copy to the device does not block).

    Training (``shuffle``): every worker takes the same number of steps, full batches when its shard holds one
    (the rest is dropped), else one batch of its whole shard, as :class:`tlsearch.inputs.ShardBatches` does.
    """

    def __init__(self, source: Any, rows: int, batch_size: int, *, world: int = 1, shuffle: bool = False,
                 seed: int = 0, pin_memory: bool = False) -> None:
        self.source, self.rows, self.batch_size, self.shuffle = source, rows, batch_size, shuffle
        self.pin_memory = pin_memory
        self.full = shuffle and rows // world >= batch_size
        self.per_worker = rows // world if shuffle else rows
        self.sampler = StreamOrder(seed)

    def __len__(self) -> int:
        if self.shuffle:
            return max(1, self.per_worker // self.batch_size)
        return -(-self.rows // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        shuffle = {"local_shuffle_buffer_size": SHUFFLE_BUFFER,
                   "local_shuffle_seed": hash((self.sampler.seed, self.sampler.epoch)) % 2**31} if self.shuffle else {}
        self.sampler.last = []
        for batch in self.source.iter_torch_batches(batch_size=self.batch_size, drop_last=self.full, device="cpu",
                                                    pin_memory=self.pin_memory, **shuffle):
            self.sampler.last += batch["row"].tolist()
            yield batch["image"], batch["label"]
        if self.shuffle:
            self.sampler.epoch += 1


def train_rows(payload: Payload, fraction: float) -> np.ndarray:
    """The trial's nested, stratified training subset, by row id."""
    from tlsearch import data as data_mod

    return data_mod.nested_fraction(payload.labels.numpy(), payload.pool, fraction, payload.split_seed)


def trial_datasets(payload: Payload, config: dict[str, Any], spec: TrialSpec) -> dict[str, Any]:
    """The ``datasets=`` of a streamed trial's ``TorchTrainer``: its training subset, augmented as asked."""
    assert payload.stream is not None
    rows = train_rows(payload, float(config["data_fraction"]))
    return {"train": dataset(payload.stream, rows, payload.labels.numpy(), spec.augment, spec.input_spec)}


def trial_inputs(model: nn.Module, hp: Hyper, spec: TrialSpec, payload: Payload, normalize: Any,
                 with_test: bool = False, *, rank: int = 0, world: int = 1, pin_memory: bool = False) -> TrialInputs:
    """A streamed trial's inputs on worker ``rank``: its ``train`` shard, its share of validation (and test)."""
    import ray.train
    from torch import nn as torch_nn

    from tlsearch import models
    from tlsearch.inputs import TrialInputs

    assert payload.stream is not None
    labels = payload.labels.numpy()
    train_size = len(train_rows(payload, hp.data_fraction))
    train = StreamBatches(ray.train.get_dataset_shard("train"), train_size, spec.batch_size, world=world,
                          shuffle=True, seed=spec.seed, pin_memory=pin_memory)

    def share(ids: np.ndarray) -> StreamBatches:
        mine = ids[rank::world]
        return StreamBatches(dataset(payload.stream, mine, labels), len(mine),  # type: ignore[arg-type]
                             spec.eval_batch_size, pin_memory=pin_memory)

    test = share(payload.test) if with_test and payload.test is not None else None
    flops, _ = models.train_flops_per_sample(model, spec.input_spec, torch_nn.CrossEntropyLoss())
    return TrialInputs(model, normalize, train, share(payload.val), test, train_size, flops, "off",
                       loading="stream", augment=spec.augment)


def cached_features(cache: Any, key: tuple[Any, ...], root: str, payload: Payload, ids: np.ndarray,
                    model: nn.Module, normalize: Any, flops_per_image: float, devices: float,
                    batch_size: int) -> tuple[torch.Tensor, Pass, bool]:
    """(features of the rows ``ids`` in that order, their pass, computed here?): stored under ``root`` by the
    first trial with ``key``, streaming the un-augmented rows through the frozen part ``batch_size`` at a time."""
    from tlsearch import features

    assert payload.stream is not None
    source, labels = payload.stream, payload.labels.numpy()

    def batches() -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        for batch in dataset(source, ids, labels).iter_torch_batches(batch_size=batch_size, device="cpu"):
            yield batch["image"], batch["row"].numpy()

    folder, cost, here = features.stored(cache, key, root, len(ids), batches, model, normalize, flops_per_image,
                                         devices)
    return features.read(folder, ids), cost, here


def first_rows(source: StreamSource, ids: np.ndarray, labels: np.ndarray) -> torch.Tensor:
    """The images of the rows ``ids`` (a few: one batch), read here."""
    import torch

    return torch.from_numpy(next(local_batches(source, ids, labels, len(ids)))[0])


class LocalBatches:
    """:func:`local_batches` as torch tensors, iterable again and again (each pass reads the rows again)."""

    def __init__(self, source: StreamSource, ids: np.ndarray, labels: np.ndarray, batch_size: int) -> None:
        self.source, self.ids, self.labels, self.batch_size = source, ids, labels, batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        import torch

        for x, y in local_batches(self.source, self.ids, self.labels, self.batch_size):
            yield torch.from_numpy(x), torch.from_numpy(y)


def held_out_batches(images: torch.Tensor, labels: torch.Tensor, ids: np.ndarray, source: StreamSource | None,
                     batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of the rows ``ids`` for the driver (the test set after a search): indexed from the decoded images,
    or, streamed, read and decoded here a block at a time."""
    if source is not None:
        return LocalBatches(source, ids, labels.numpy(), batch_size)
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    idx = torch.from_numpy(ids)
    return DataLoader(TensorDataset(images[idx], labels[idx]), batch_size=batch_size)
