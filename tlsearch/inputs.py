"""What a trial trains on: its data subset, each worker's shard of it, and the linear probe's cached features.

With several workers, each trains on its own shard of the trial's subset (:class:`ShardBatches`: disjoint,
covering, reshuffled every epoch from the trial's seed) and validates its share of the validation split, never
padded. Batches are indexings of in-memory tensors, copied to the device without blocking (from pinned memory on
GPUs).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from tlsearch import data as data_mod
from tlsearch import features, models, stream
from tlsearch.augment import Transform, augment_batch, train_transform
from tlsearch.config import Hyper
from tlsearch.errors import DataError
from tlsearch.models import SourceWeights
from tlsearch.spec import TrialSpec
from tlsearch.stream import StreamBatches, StreamOrder, StreamSource
from tlsearch.train import _device_of


@dataclass(frozen=True)
class Payload:
    """The search's decoded data and weights, put once in the object store and shared by every trial."""

    images: torch.Tensor  # uint8 N x C x H x W
    labels: torch.Tensor  # int64 N
    pool: np.ndarray  # indices trials draw their training subsets from
    val: np.ndarray  # validation indices, the same for every trial
    source: Mapping[str, SourceWeights] | None  # pretrained weights by model; None: a scratch-only search
    split_seed: int
    test: np.ndarray | None = None  # held-out test indices: never seen by the search, only by confirm and export
    stream: StreamSource | None = None  # set: images stay where they are (``images`` is empty), Ray Data streams them
    features_root: str | None = None  # streamed: where linear probes' frozen features are kept (any storage URI)

    def source_for(self, model: str) -> SourceWeights | None:
        """The pretrained weights of ``model`` (None when the search has none for it)."""
        return (self.source or {}).get(model)


def subset(payload: Payload, hp: Hyper) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the trial's training subset (nested, stratified) and of the shared validation split."""
    labels = payload.labels.numpy()
    train_idx = data_mod.nested_fraction(labels, payload.pool, hp.data_fraction, payload.split_seed)
    return torch.from_numpy(train_idx), torch.from_numpy(payload.val)


class ShardBatches(Sampler[list[int]]):
    """The batches of one worker's shard of ``size`` items; over all ``world`` workers the shards are disjoint.

    Shuffled (training): a permutation drawn from ``seed`` and the epoch is dealt round-robin, so shards differ by
    at most one item and together cover the set. Every worker takes the same number of steps, whatever its
    shard: full batches when the smallest shard holds one (the remainder of each shard is dropped), else one
    batch of its whole shard. No worker waits in a collective for another that has run out, and one worker
    behaves as a shuffled, ``drop_last``-when-possible DataLoader. Each pass reshuffles (the epoch advances by
    itself); :meth:`set_epoch` pins it, as ``DistributedSampler``'s does.

    Sequential (validation, test): items ``rank, rank + world, ...``, never padded, so every item is counted
    exactly once over all workers.
    """

    def __init__(self, size: int, batch_size: int, *, rank: int = 0, world: int = 1, shuffle: bool = False,
                 seed: int = 0) -> None:
        if shuffle and size < world:
            raise DataError(f"a training subset of {size} image(s) cannot be shared by {world} workers; "
                            f"use a larger data fraction or at most {max(size, 1)} worker(s)")
        self.size, self.batch_size, self.rank, self.world = size, batch_size, rank, world
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.last: list[int] = []  # the items of the latest pass, in order

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if not self.shuffle:
            return -(-len(range(self.rank, self.size, self.world)) // self.batch_size)
        return max(1, (self.size // self.world) // self.batch_size)

    @property
    def items_per_pass(self) -> int:
        """Items one pass uses over all workers."""
        full = self.shuffle and self.size // self.world >= self.batch_size
        return len(self) * self.batch_size * self.world if full else self.size

    def __iter__(self) -> Iterator[list[int]]:
        order = np.arange(self.size)
        if self.shuffle:
            order = np.random.default_rng([self.seed % 2**64, self.epoch]).permutation(self.size)
            self.epoch += 1
        mine = order[self.rank::self.world]
        if self.shuffle and self.size // self.world >= self.batch_size:
            mine = mine[: len(self) * self.batch_size]
        self.last = mine.tolist()
        for start in range(0, len(self.last), self.batch_size):
            yield self.last[start : start + self.batch_size]


class AugmentedTensors(TensorDataset):
    """Images and labels whose indexed batches come out augmented, each image on its own (training only)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Transform) -> None:
        super().__init__(images, labels)
        self.transform = transform

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, ...]:
        images, labels = super().__getitem__(index)
        return augment_batch(images, self.transform), labels


def loaders(
    train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], spec: TrialSpec,
    test: tuple[torch.Tensor, torch.Tensor] | None = None, *, rank: int = 0, world: int = 1,
    pin_memory: bool = False, augment: Transform | None = None,
) -> tuple[DataLoader, DataLoader, DataLoader | None]:
    """This worker's loaders over in-memory tensors (images or cached features): nothing is decoded per epoch.

    Each batch is one indexing of the tensors (no per-item collation); ``pin_memory`` (on GPUs) lets the copy to
    the device overlap the step before. ``augment`` transforms the training images of every batch (never the
    validation or test images).
    """

    def loader(tensors: tuple[torch.Tensor, torch.Tensor], batch_size: int, shuffle: bool) -> DataLoader:
        batches = ShardBatches(len(tensors[1]), batch_size, rank=rank, world=world, shuffle=shuffle, seed=spec.seed)
        held = AugmentedTensors(*tensors, augment) if shuffle and augment else TensorDataset(*tensors)
        return DataLoader(held, sampler=batches, batch_size=None, pin_memory=pin_memory)

    test_loader = loader(test, spec.eval_batch_size, False) if test is not None else None
    return loader(train, spec.batch_size, True), loader(val, spec.eval_batch_size, False), test_loader


class DeviceBatches:
    """A loader's batches on ``device``, copied without blocking (from pinned memory when the loader pins)."""

    def __init__(self, loader: DataLoader | StreamBatches, device: torch.device) -> None:
        if not isinstance(loader.sampler, ShardBatches | StreamOrder):
            raise TypeError(f"DeviceBatches needs a loader built by inputs.loaders or stream.StreamBatches, got "
                            f"{type(loader.sampler)}")
        self.loader, self.device = loader, device
        self.sampler: ShardBatches | StreamOrder = loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


@dataclass(frozen=True)
class TrialInputs:
    """What a trial trains (the model, or its classifier alone on cached features) and on what."""

    net: nn.Module
    normalize: Any
    train: DataLoader | StreamBatches
    val: DataLoader | StreamBatches
    test: DataLoader | StreamBatches | None
    train_size: int
    flops_per_sample: float
    cache_status: str  # off | miss | hit
    passes: tuple[features.Pass, ...] = ()  # shared frozen-part passes its inputs come from
    shared_seconds: float = 0.0  # seconds this trial spent computing passes (charged to every user instead)
    loading: str = "memory"  # memory | stream
    augment: str = "none"  # the augmentation its training batches got (none on cached features)

    @property
    def facts(self) -> dict[str, str]:
        """How its data came, as reported each epoch (``data_loading`` and ``augment`` in the trials table)."""
        return {"data_loading": self.loading, "augment": self.augment}

    @property
    def shared_pass(self) -> dict[str, Any]:
        """The passes, as reported each epoch; the tables split each one's cost over the trials that used it."""
        return {"feature_passes": json.dumps([asdict(p) for p in self.passes])} if self.passes else {}


def trial_inputs(
    model: nn.Module, hp: Hyper, spec: TrialSpec, payload: Payload, normalize: Any, cache: Any,
    with_test: bool = False, *, rank: int = 0, world: int = 1, pin_memory: bool = False,
) -> TrialInputs:
    """The whole model on images; or, for a linear probe, its classifier on frozen features computed once.

    ``model`` and ``normalize`` are on the training device; the loaders are worker ``rank``'s of ``world``. A
    streamed payload trains the whole model on this worker's Ray Data shard (:func:`tlsearch.stream.trial_inputs`),
    a streamed linear probe on features stored once per key (:func:`tlsearch.stream.cached_features`).
    """
    train_idx, val_idx = subset(payload, hp)
    test_idx = torch.from_numpy(payload.test) if with_test and payload.test is not None else None
    labels = payload.labels
    loss_fn = nn.CrossEntropyLoss()
    cached = _classifier_features(cache, model, hp, payload, (train_idx, val_idx, test_idx), normalize,
                                  spec.devices_per_worker, spec.eval_batch_size) if spec.feature_cache else None
    if cached is None and payload.stream is not None:
        return stream.trial_inputs(model, hp, spec, payload, normalize, with_test, rank=rank, world=world,
                                   pin_memory=pin_memory)
    if cached is None:
        flops, _ = models.train_flops_per_sample(model, spec.input_spec, loss_fn)
        sets = [(payload.images[i], labels[i]) if i is not None else None for i in (train_idx, val_idx, test_idx)]
        train, val, test = loaders(sets[0], sets[1], spec, sets[2],  # type: ignore[arg-type]
                                   rank=rank, world=world, pin_memory=pin_memory,
                                   augment=train_transform(spec.augment, spec.input_spec))
        return TrialInputs(model, normalize, train, val, test, len(train_idx), flops, "off", augment=spec.augment)
    classifier: nn.Module = model.get_classifier()  # type: ignore[operator]
    test_set = (cached.test, labels[test_idx]) if cached.test is not None and test_idx is not None else None
    train, val, test = loaders((cached.train, labels[train_idx]), (cached.val, labels[val_idx]), spec, test_set,
                               rank=rank, world=world, pin_memory=pin_memory)
    return TrialInputs(
        classifier, _identity, train, val, test, len(train_idx),
        _classifier_flops(classifier, cached.train[:2], loss_fn), "miss" if cached.computed_images else "hit",
        cached.passes, sum(p.seconds for p, here in zip(cached.passes, cached.here, strict=True) if here),
        loading="memory" if payload.stream is None else "stream",
    )


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _classifier_features(
    cache: Any, model: nn.Module, hp: Hyper, payload: Payload,
    idx: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None], normalize: Any, devices: float,
    batch_size: int = 512,
) -> features.Features | None:
    """Cached frozen-part outputs for a linear probe, or None when the trial must run the whole model (streamed:
    also when the search has no cache, as ``tlsearch confirm``, or no storage the features can be kept in)."""
    train_idx, val_idx, test_idx = idx
    if not features.eligible(model):
        return None
    root = payload.features_root if payload.stream is not None and cache is not None else None
    if payload.stream is not None and root is None:
        return None
    few = (payload.images[val_idx[:4]] if payload.stream is None
           else stream.first_rows(payload.stream, payload.val[:4], payload.labels.numpy()))
    probe = normalize(few.to(_device_of(model)))  # the normaliser lives on that device
    if not features.matches(model, probe):
        return None
    flops = features.forward_flops_per_image(model, probe[:2])
    keys = [("train", hp.model, hp.freeze_depth, hp.data_fraction, payload.split_seed),
            ("val", hp.model, hp.freeze_depth)]
    sets = [train_idx, val_idx]
    if test_idx is not None:
        keys.append(("test", hp.model, hp.freeze_depth))
        sets.append(test_idx)

    def one(key: tuple[Any, ...], ids: torch.Tensor) -> tuple[torch.Tensor, features.Pass, bool]:
        if root is None:
            return features.cached(cache, key, model, payload.images[ids], normalize, flops, devices)
        return stream.cached_features(cache, key, root, payload, ids.numpy(), model, normalize, flops, devices,
                                      batch_size)

    got = [one(key, i) for key, i in zip(keys, sets, strict=True)]
    computed = sum(len(i) for i, (_, _, here) in zip(sets, got, strict=True) if here)
    return features.Features(got[0][0], got[1][0], got[2][0] if test_idx is not None else None,
                   tuple(g[1] for g in got), tuple(g[2] for g in got), computed)


def _classifier_flops(classifier: nn.Module, example: torch.Tensor, loss_fn: nn.Module) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    device = next(classifier.parameters()).device
    example = example.to(device)
    with FlopCounterMode(display=False) as counter:
        loss = loss_fn(classifier(example), torch.zeros(len(example), dtype=torch.long, device=device))
        loss.backward()
    classifier.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(example)
