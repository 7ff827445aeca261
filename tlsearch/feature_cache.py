"""The search's feature cache actor and the cost of one frozen-part pass: torch-free.

Every process that receives the actor's handle imports the module its class is defined in: each trial's Tune
function (through ``tune.with_parameters``) and Train controller (through ``train_loop_config``) as well as its
workers. Kept apart from :mod:`tlsearch.features` (which imports torch and timm), it costs those processes
nothing; the features it holds are only unpickled in the workers that read them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

LEASE_S = 300.0  # a claim to compute a key lapses when its holder has not renewed it for this long


class FeatureCache:
    """A Ray actor holding frozen-part outputs for one search (created by the driver, ``num_cpus=0``)."""

    def __init__(self) -> None:
        # in memory: the features; streamed: the folder they are stored in
        self._store: dict[tuple[Any, ...], tuple[torch.Tensor | str, Pass]] = {}
        self._claims: dict[tuple[Any, ...], tuple[str, float]] = {}  # key -> (owner, last renewed, monotonic)

    def get(self, key: tuple[Any, ...]) -> tuple[torch.Tensor | str, Pass] | None:
        return self._store.get(key)

    def put(self, key: tuple[Any, ...], value: torch.Tensor | str, cost: Pass) -> None:
        self._store.setdefault(key, (value, cost))
        self._claims.pop(key, None)

    def claim(self, key: tuple[Any, ...], owner: str, lease_s: float = LEASE_S) -> bool:
        """Should ``owner`` compute ``key``? Yes unless it is stored or another owner holds a claim renewed within
        ``lease_s``; asking again renews one's own claim (a holder that died stops renewing, and its claim lapses)."""
        now = time.monotonic()
        held = self._claims.get(key)
        if key in self._store or (held is not None and held[0] != owner and now - held[1] < lease_s):
            return False
        self._claims[key] = (owner, now)
        return True

    def release(self, key: tuple[Any, ...], owner: str) -> None:
        """``owner`` gives up computing ``key`` (it failed): the next trial to ask claims it."""
        if self._claims.get(key, ("", 0.0))[0] == owner:
            del self._claims[key]

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
