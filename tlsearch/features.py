"""The feature cache: when only the classifier trains, the frozen rest runs once, not every step of every epoch.

A trial whose trainable parameters all belong to the model's classifier (a linear probe) computes the frozen
part's output (timm's ``forward_head(forward_features(x), pre_logits=True)``) once for its training subset and
for the validation split, then trains and evaluates the classifier alone on those tensors. The outputs are kept
in a :class:`~tlsearch.feature_cache.FeatureCache` actor that lives as long as the search, keyed by (model,
freeze depth, data subset): each model's weights and input are fixed within a search, so the key names everything
the features depend on, and a new search starts with an empty cache. Before a trial uses cached features it
checks, on a few images, that classifier(features) equals the model's own output; a model where that fails trains
the usual way.

A streamed search (:mod:`tlsearch.stream`) keeps no image in memory, so neither do its features: the trial that
claims a key (:meth:`~tlsearch.feature_cache.FeatureCache.claim`) streams the rows through the frozen part batch
by batch, appends each batch to ``features.npy`` and ``rows.npy`` in the key's folder (:func:`write`), and the
cache holds that folder; every trial with the key reads the features from it (:func:`read`), none reads the
images.
"""

from __future__ import annotations

import hashlib
import io
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from tlsearch import models, storage
from tlsearch.errors import DataError
from tlsearch.feature_cache import Pass

WAIT_S = 0.5  # how often a trial waiting for another's features asks the cache again
FEATURES, ROWS = "features.npy", "rows.npy"  # a stored key's files: float32 N x D, and each row's id (int64 N)


@dataclass(frozen=True)
class Features:
    """Cached inputs for the classifier: training subset, validation (and test) split, and their passes."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor | None
    passes: tuple[Pass, ...]  # every pass this trial's inputs came from, computed here or by another trial
    here: tuple[bool, ...]  # per pass: computed by this trial (True) or taken from the cache
    computed_images: int  # images this trial ran through the frozen part (0 when all came from the cache)


def eligible(model: nn.Module) -> bool:
    """Only the classifier trains, and timm's forward_features/forward_head split the model before it."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    classifier = {n for n in models.classifier_keys(model) if n in dict(model.named_parameters())}
    return bool(trainable) and trainable <= classifier and hasattr(model, "forward_head")


@torch.no_grad()
def frozen_part(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = model.forward_head(model.forward_features(x), pre_logits=True)  # type: ignore[operator]
    model.train(was_training)
    return out


@torch.no_grad()
def matches(model: nn.Module, x: torch.Tensor) -> bool:
    """Does classifier(frozen_part(x)) reproduce model(x)? (eval mode; guards models whose head differs)."""
    was_training = model.training
    model.eval()
    try:
        direct = model(x)
        split = model.get_classifier()(frozen_part(model, x))  # type: ignore[operator]
    except (RuntimeError, TypeError, AttributeError):
        return False
    finally:
        model.train(was_training)
    return direct.shape == split.shape and torch.allclose(direct, split, rtol=1e-4, atol=1e-4)


def compute(model: nn.Module, images: torch.Tensor, normalize: Any, batch_size: int = 512) -> torch.Tensor:
    device = next(model.parameters()).device
    chunks = [frozen_part(model, normalize(chunk.to(device))) for chunk in torch.split(images, batch_size)]
    return torch.cat(chunks).float().cpu()


def cached(
    cache: Any, key: tuple[Any, ...], model: nn.Module, images: torch.Tensor, normalize: Any, flops_per_image: float,
    devices: float = 1.0,
) -> tuple[torch.Tensor, Pass, bool]:
    """(features, the pass that made them, computed here?): from the cache actor when present, else computed."""
    import ray

    found = ray.get(cache.get.remote(key)) if cache is not None else None
    if found is not None and isinstance(found[0], torch.Tensor):
        return found[0], found[1], False
    started = time.perf_counter()
    value = compute(model, images, normalize)
    cost = Pass("/".join(str(k) for k in key), time.perf_counter() - started, devices, len(images),
                flops_per_image * len(images))
    if cache is not None:
        ray.get(cache.put.remote(key, value, cost))
    return value, cost, True


def forward_flops_per_image(model: nn.Module, example: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        frozen_part(model, example)
    return counter.get_total_flops() / len(example)


def key_folder(root: str, key: tuple[Any, ...]) -> str:
    """The folder of ``key``'s stored features under ``root``: readable, and unique by a digest of the key."""
    readable = re.sub(r"[^A-Za-z0-9._=-]+", "_", "-".join(str(k) for k in key))[:80]
    return storage.join(root, f"{readable}-{hashlib.sha1(repr(key).encode()).hexdigest()[:12]}")


def frozen_batches(model: nn.Module, batches: Iterable[tuple[torch.Tensor, np.ndarray]],
                   normalize: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(row ids, float32 features) of each (uint8 images, row ids) batch, one batch at a time."""
    device = next(model.parameters()).device
    for images, rows in batches:
        yield np.asarray(rows), frozen_part(model, normalize(images.to(device))).float().cpu().numpy()


def write(folder: str, count: int, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
    """Store ``count`` rows' features in ``folder``, batch by batch: each (row ids, features N x D) batch is
    appended to ``features.npy`` and ``rows.npy`` as it comes, in any order (Ray Data keeps none), so one batch at a
    time is held. Both files appear atomically at the end, and only when exactly ``count`` rows came."""
    with (storage.writing(storage.join(folder, FEATURES)) as values_path,
          storage.writing(storage.join(folder, ROWS)) as rows_path,
          open(values_path, "wb") as values_out, open(rows_path, "wb") as rows_out):
        np.lib.format.write_array_header_1_0(rows_out, _header(np.int64, (count,)))
        written = 0
        for rows, values in batches:
            if written == 0:
                np.lib.format.write_array_header_1_0(values_out, _header(np.float32, (count, values.shape[1])))
            written += len(rows)
            if written > count:
                break
            values_out.write(np.ascontiguousarray(values, dtype=np.float32).tobytes())
            rows_out.write(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
        if written != count or count == 0:
            raise DataError(f"features for {folder}: got {written} row(s) from the frozen part, expected {count}")


def _header(dtype: Any, shape: tuple[int, ...]) -> dict[str, Any]:
    return {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}


def read(folder: str, ids: np.ndarray) -> torch.Tensor:
    """The stored features of rows ``ids``, in that order (memory-mapped from local storage: only those rows are
    read)."""
    rows, values = _load(storage.join(folder, ROWS)), _load(storage.join(folder, FEATURES))
    order = np.argsort(rows)
    at = order[np.minimum(np.searchsorted(rows, ids, sorter=order), len(rows) - 1)]
    if len(rows) == 0 or not np.array_equal(rows[at], ids):
        raise DataError(f"features in {folder}: rows {sorted(set(ids.tolist()) - set(rows.tolist()))[:5]} missing")
    return torch.from_numpy(np.ascontiguousarray(values[at]))


def _load(uri: str) -> np.ndarray:
    if storage.is_local(uri):
        return np.load(storage.normalize(uri), mmap_mode="r")
    blob = storage.read_bytes(uri)
    if blob is None:
        raise DataError(f"features {uri}: not found (removed while the search ran?)")
    return np.load(io.BytesIO(blob))


def stored(
    cache: Any, key: tuple[Any, ...], root: str, count: int,
    batches: Callable[[], Iterable[tuple[torch.Tensor, np.ndarray]]], model: nn.Module, normalize: Any,
    flops_per_image: float, devices: float = 1.0,
) -> tuple[str, Pass, bool]:
    """(folder, the pass that wrote it, computed here?) of ``key``'s features on the streamed path: the cache names
    the folder, or this trial claims the key and streams ``batches()`` through the frozen part into it; while
    another trial holds the claim, this one waits for it."""
    import ray

    owner = uuid.uuid4().hex
    while (found := ray.get(cache.get.remote(key))) is None:
        if ray.get(cache.claim.remote(key, owner)):
            break
        time.sleep(WAIT_S)
    if found is not None:
        return str(found[0]), found[1], False
    folder, started = key_folder(root, key), time.perf_counter()

    def renewing() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for batch in frozen_batches(model, batches(), normalize):
            cache.claim.remote(key, owner)  # still at it
            yield batch

    try:
        write(folder, count, renewing())
    except BaseException:
        cache.release.remote(key, owner)
        raise
    cost = Pass("/".join(str(k) for k in key), time.perf_counter() - started, devices, count, flops_per_image * count)
    ray.get(cache.put.remote(key, folder, cost))
    return folder, cost, True
