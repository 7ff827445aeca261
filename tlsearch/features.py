"""The feature cache: when only the classifier trains, the frozen rest runs once, not every step of every epoch.

A trial whose trainable parameters all belong to the model's classifier (a linear probe) computes the frozen
part's output (timm's ``forward_head(forward_features(x), pre_logits=True)``) once for its training subset and
for the validation split, then trains and evaluates the classifier alone on those tensors. The outputs are kept
in a :class:`FeatureCache` actor that lives as long as the search, keyed by (model, freeze depth, data subset):
each model's weights and input are fixed within a search, so the key names everything the features depend on,
and a new search starts with an empty cache. Before a trial uses cached features it checks, on a few images, that
classifier(features) equals the model's own output; a model where that fails trains the usual way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tlsearch import models


class FeatureCache:
    """A Ray actor holding frozen-part outputs for one search (created by the driver, ``num_cpus=0``)."""

    def __init__(self) -> None:
        self._store: dict[tuple[Any, ...], tuple[torch.Tensor, Pass]] = {}

    def get(self, key: tuple[Any, ...]) -> tuple[torch.Tensor, Pass] | None:
        return self._store.get(key)

    def put(self, key: tuple[Any, ...], value: torch.Tensor, cost: Pass) -> None:
        self._store.setdefault(key, (value, cost))

    def keys(self) -> list[tuple[Any, ...]]:
        return list(self._store)


@dataclass(frozen=True)
class Pass:
    """What one frozen-part pass over a set of images cost: the trials that use its output share it evenly."""

    key: str
    seconds: float
    devices: float  # what the worker that ran it held (CPUs or GPUs): device-seconds = seconds x devices
    images: int
    flops: float


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
    import time

    import ray

    found = ray.get(cache.get.remote(key)) if cache is not None else None
    if found is not None:
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
