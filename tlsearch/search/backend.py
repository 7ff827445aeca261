"""The torch process group of a trial's Train run, set up without importing torch where nothing trains.

Ray's ``TorchTrainer`` is ``DataParallelTrainer`` with ``TorchConfig`` as its backend. Both import torch (3.1 s
here) in the two processes of a trial that never train: the Tune function that builds the trainer and the Train
controller that unpickles the backend config. :class:`TorchBackendConfig` is the same backend (DDP process group
over ``env://``, rank variables, the CUDA device per worker, the same shutdown), but its functions run Ray's own
torch setup inside the workers, importing it there. The trial fits a ``DataParallelTrainer`` (Ray Train V2's
base trainer, a developer API) with it, so each trial is still one Ray Train run with Ray's worker group,
reports, checkpoints and restores. TPUs (Ray's ``tpu_dist`` branch) are not covered.

Measured with ``benchmarks/startup_ab.py`` (with the feature cache's actor class moved out of torch code, see
:mod:`tlsearch.feature_cache`): a trial's start-up median 20.5 -> 15.3 s on 2 CPUs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError
from ray.train.backend import Backend, BackendConfig
from ray.train.constants import DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S
from ray.train.v2._internal.util import TrainingFramework

logger = logging.getLogger(__name__)


def process_group_backend(num_workers: int, use_gpu: bool, gpus_per_worker: float) -> str:
    """NCCL when each worker has a GPU of its own; gloo on CPUs and when a trial's workers may share one GPU
    (NCCL refuses two ranks on one device; gloo all-reduces CUDA tensors too)."""
    return "nccl" if use_gpu and (num_workers == 1 or gpus_per_worker >= 1) else "gloo"


@dataclass
class TorchBackendConfig(BackendConfig):
    """Ray's ``TorchConfig`` (``init_method="env"``) for a trial's workers, importable without torch."""

    backend: str = "gloo"
    timeout_s: int = 1800

    @property
    def backend_cls(self) -> type[Backend]:
        return TorchBackend

    @property
    def train_func_context(self) -> type[_DeviceContext]:
        return _DeviceContext

    @property
    def framework(self) -> TrainingFramework:
        return TrainingFramework.TORCH

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "init_method": "env", "timeout_s": self.timeout_s}


class _DeviceContext:
    """Around the worker function (in the worker): Ray's ``TorchConfigContextManager`` (the worker's CUDA device)."""

    def __enter__(self) -> None:
        from ray.train.torch.config import TorchConfigContextManager

        TorchConfigContextManager().__enter__()

    def __exit__(self, *exc: object) -> None:
        return None


class TorchBackend(Backend):
    """Ray's ``_TorchBackend`` steps, each run in the workers by a function that imports torch there."""

    share_cuda_visible_devices: bool = True  # workers of one node see each other's GPUs (NCCL needs it)

    def on_start(self, worker_group: Any, backend_config: TorchBackendConfig) -> None:  # type: ignore[override]
        from ray.train._internal.utils import get_address_and_port

        address, port = worker_group.execute_single(0, get_address_and_port)
        size = len(worker_group)
        ray.get([
            worker_group.execute_single_async(
                rank, _join_process_group, address=address, port=port, backend=backend_config.backend,
                world_rank=rank, world_size=size, timeout_s=backend_config.timeout_s,
            )
            for rank in range(size)
        ])

    def on_shutdown(self, worker_group: Any, backend_config: TorchBackendConfig) -> None:  # type: ignore[override]
        futures = worker_group.execute_async(_leave_process_group, destroy=len(worker_group) > 1)
        default = DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S
        timeout_s = int(os.environ.get(TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, default))
        try:
            ray.get(futures, timeout=timeout_s)
        except GetTimeoutError:
            logger.warning("torch process group shutdown timed out after %s s", timeout_s)


def _join_process_group(
    *, address: str, port: int, backend: str, world_rank: int, world_size: int, timeout_s: int
) -> None:
    """In a worker: the rendezvous address, the rank variables and the process group, as Ray's TorchConfig sets
    them."""
    from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = address, str(port)
    _set_torch_distributed_env_vars()
    _setup_torch_process_group(
        backend=backend, world_rank=world_rank, world_size=world_size, init_method="env://", timeout_s=timeout_s
    )


def _leave_process_group(*, destroy: bool) -> None:
    """In a worker: Ray's torch shutdown (destroy the process group when there are several ranks, free CUDA)."""
    from ray.train.torch.config import _shutdown_torch

    _shutdown_torch(destroy_process_group=destroy)
