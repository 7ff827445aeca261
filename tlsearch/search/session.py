"""Where it runs: the Ray session (a local Ray kept on 127.0.0.1, or a cluster) and what each trial holds.

:func:`plan_resources` turns the cluster's resources into each model's trial shape and the trial concurrency,
counting everything a whole trial holds (its Tune function plus its Train workers) so that no trial waits forever
for workers another trial's driver is holding. Models may hold different resources per worker
(``model_resources``); TPE picks each trial's model later, so the concurrency is planned from the largest shape:
any mix of that many trials fits.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass, replace

from tlsearch.config import SearchConfig
from tlsearch.errors import ConfigError, TLSearchError

DRIVER_CPU = 0.01  # what a trial's Tune function holds; its Train workers hold the rest of the trial's CPUs
# Ray starts a trial's processes (Tune function, Tune's report queue, Train controller, its synchronisation actor,
# the workers) at most this many at a time; its default, the CPU count, queues them on small machines (measured
# here: a trial's start-up 26.7 -> 23.0 s median, an 8-trial search 127 -> 104 s). A cluster keeps its own
# setting (its default, the node's CPU count, is 8 or more on the GPU nodes of clusters/).
STARTUP_CONCURRENCY = 8
# Ray Train starts a preemption watcher process beside every run to react when a cluster drains a node; one local
# node has nothing to drain, so a local Ray started here runs without it (one of the 8 processes a trial starts;
# measured here: 8-trial searches 226 and 231 s without, 234 and 244 s with). A user's setting is kept.
PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


@dataclass(frozen=True)
class Resources:
    """What each trial asks for and how many trials run at once; a model of ``per_model`` holds its own CPUs and
    GPUs per worker (see :meth:`for_model`)."""

    num_workers: int
    use_gpu: bool
    cpus_per_worker: float
    gpus_per_worker: float
    threads: int
    concurrency: int
    per_model: tuple[tuple[str, float, float], ...] = ()  # (model, CPUs, GPUs per worker) unlike the fields above

    def for_model(self, model: str) -> Resources:
        """The shape of a trial of ``model``: its own entry of ``per_model``, else this one."""
        for name, cpus, gpus in self.per_model:
            if name == model:
                return replace(self, cpus_per_worker=cpus, gpus_per_worker=gpus, threads=_threads(cpus), per_model=())
        return self

    def describe(self) -> str:
        """``1 worker(s) x 1 CPU + 1 GPU``, and each model's own shape."""
        def shape(cpus: float, gpus: float) -> str:
            return f"{cpus:g} CPU" + (f" + {gpus:g} GPU" if self.use_gpu else "")

        own = "".join(f"; {name}: {shape(cpus, gpus)}" for name, cpus, gpus in self.per_model)
        return f"{self.num_workers} worker(s) x {shape(self.cpus_per_worker, self.gpus_per_worker)}{own}"

    @property
    def devices_per_worker(self) -> float:
        """What one worker's wall second costs in device-seconds: its GPUs, else its CPUs."""
        return self.gpus_per_worker if self.use_gpu else self.cpus_per_worker

    def worker_resources(self) -> dict[str, float]:
        """One Train worker's Ray resources (the trial's Tune function holds DRIVER_CPU of the CPUs)."""
        per_worker = {"CPU": self.cpus_per_worker - DRIVER_CPU / self.num_workers}
        if self.use_gpu:
            per_worker["GPU"] = self.gpus_per_worker
        return per_worker


def plan_resources(config: SearchConfig, cluster: dict[str, float]) -> Resources:
    """Each model's trial shape, and the concurrency from the largest, so no trial waits forever for its workers."""
    gpus = cluster.get("GPU", 0.0)
    use_gpu = config.use_gpu if config.use_gpu is not None else gpus >= 1
    default = (config.cpus_per_worker or 1.0, config.gpus_per_worker)
    shapes = {model: (wanted.cpus_per_worker or default[0], wanted.gpus_per_worker or default[1])
              for model, wanted in ((m, config.resources_for(m)) for m in config.space.models)}
    workers = config.num_workers
    most_gpus = max(shapes, key=lambda m: shapes[m][1])
    trial_gpus = workers * shapes[most_gpus][1]
    if use_gpu and gpus < trial_gpus:
        raise ConfigError(f"use_gpu with {workers} worker(s) x {shapes[most_gpus][1]:g} GPU"
                          f"{_of(config, most_gpus)} needs {trial_gpus:g} GPU(s); the cluster has {gpus:g}")
    cpus = cluster.get("CPU", 0.0)
    most_cpus = max(shapes, key=lambda m: shapes[m][0])
    trial_cpus = workers * shapes[most_cpus][0]
    by_cpu = math.floor(cpus / trial_cpus + 1e-9)
    by_gpu = math.floor(gpus / trial_gpus + 1e-9) if use_gpu else by_cpu
    fits = min(by_cpu, by_gpu)
    if fits < 1:
        raise ConfigError(f"a trial{_of(config, most_cpus)} needs {trial_cpus:g} CPU(s) ({workers} worker(s) x "
                          f"{shapes[most_cpus][0]:g}); the cluster has {cpus:g}")
    concurrency = min(fits, config.trials, config.max_concurrent or fits)
    per_model = tuple((m, c, g) for m, (c, g) in shapes.items() if (c, g) != default)
    return Resources(workers, use_gpu, default[0], default[1], _threads(default[0]), concurrency, per_model)


def _threads(cpus_per_worker: float) -> int:
    """torch's threads in a worker holding ``cpus_per_worker`` CPUs."""
    return max(1, int(cpus_per_worker))


def _of(config: SearchConfig, model: str) -> str:
    """`` of MODEL`` when the models' trials differ in shape (which one a message is about), else nothing."""
    return f" of {model}" if config.model_resources else ""


def start_ray(address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = False) -> None:
    """Connect to ``address`` (or RAY_ADDRESS), else start a local Ray bound to 127.0.0.1.

    The dashboard (on 127.0.0.1) is kept on: Ray Train V2 frees each trial's worker placement group through
    the State API it serves, and without it finished trials keep their CPUs and the next trials never start.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if not address or is_loopback_address(address):
        _stay_on_loopback()
    try:
        if address:
            ray.init(address=address, log_to_driver=log_to_driver)
        else:
            os.environ.setdefault(PREEMPTION_WATCHER, "0")  # Ray's processes inherit this one's environment
            ray.init(
                num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                _node_ip_address="127.0.0.1", log_to_driver=log_to_driver,
                _system_config={"worker_maximum_startup_concurrency": STARTUP_CONCURRENCY},
            )
    except (ConnectionError, TimeoutError, ValueError) as exc:
        raise TLSearchError(f"cannot reach Ray at {address or 'a new local instance'}: {exc}") from None


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not after Ray's minutes of retries, when nothing listens at ``address``."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not port.isdigit():
        raise TLSearchError(f"Ray address {address!r} has no port; expected HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise TLSearchError(f"cannot reach Ray at {address}: {exc.strerror or exc}") from None


def is_loopback_address(address: str) -> bool:
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def _stay_on_loopback() -> None:
    """Keep Ray on 127.0.0.1: by default it swaps a loopback address for the machine's routable one.

    The switch is read when ray is imported, so it is set for the processes Ray starts and for this one.
    """
    import ray._private.ray_constants as ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
