"""The loop: what one Ray Train worker does for one trial, one small named step at a time.

The worker gets the decoded data and the source weights from Ray's object store, builds and freezes the
model, trains it for up to ``max_epochs`` and reports, every epoch, the validation metrics and the cumulative
cost (wall seconds, device-seconds, samples seen, FLOPs measured with the freeze in place). Every epoch it also
checkpoints model, optimizer, scheduler, gradient scaler, epoch, cost and RNG state, so a restarted worker
continues.

With several workers, each trains on its own shard of the trial's subset (:class:`ShardBatches`: disjoint,
covering, reshuffled every epoch from the trial's seed) and validates its share of the validation split; the
sums are all-reduced on the training device, so every worker reports the same metrics. On a GPU the defaults are
what GPU users expect: batches copied from pinned memory without blocking, channels-last for convolutional
models, cuDNN autotuning and mixed precision (:meth:`Precision.resolve`); none of them changes a CPU run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler, TensorDataset

from tlsearch import data as data_mod
from tlsearch import features, models
from tlsearch.config import Hyper
from tlsearch.errors import DataError
from tlsearch.models import FreezePlan, InputSpec, SourceWeights


@dataclass(frozen=True)
class TrialSpec:
    """Everything a worker needs that the searcher does not choose."""

    model: str
    num_classes: int
    input_spec: InputSpec
    max_epochs: int
    batch_size: int
    eval_batch_size: int
    weight_decay: float
    seed: int
    threads: int
    devices_per_worker: float
    precision: str = "auto"  # see Precision.resolve
    feature_cache: bool = True
    evaluate_test: bool = False  # only `tlsearch confirm` evaluates the test set every epoch; a search never does


@dataclass(frozen=True)
class Payload:
    """The search's decoded data and weights, put once in the object store and shared by every trial."""

    images: torch.Tensor  # uint8 N x C x H x W
    labels: torch.Tensor  # int64 N
    pool: np.ndarray  # indices trials draw their training subsets from
    val: np.ndarray  # validation indices, the same for every trial
    source: SourceWeights | None
    split_seed: int
    test: np.ndarray | None = None  # held-out test indices: never seen by the search, only by confirm and export


def build_model(spec: TrialSpec, hp: Hyper, source: SourceWeights | None) -> tuple[nn.Module, FreezePlan]:
    pretrained = source if hp.init == "pretrained" else None
    model = models.build(spec.model, spec.num_classes, pretrained, spec.input_spec)
    return model, models.apply_freeze(model, hp.freeze_depth)


def make_optimizer(
    model: nn.Module, plan: FreezePlan, hp: Hyper, weight_decay: float, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with the head and the trainable backbone at their own learning rates, cosine-decayed."""
    named = dict(model.named_parameters())
    groups = [
        {"params": [named[n] for n in plan.head], "lr": hp.head_lr},
        {"params": [named[n] for n in plan.backbone], "lr": hp.backbone_lr},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    return optimizer, scheduler


def normalizer(spec: InputSpec, device: torch.device, channels_last: bool = False) -> Any:
    """uint8 images (on ``device``) to the model's normalised float input, channels-last when asked."""
    mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1) * 255.0
    std = torch.tensor(spec.std, device=device).view(1, -1, 1, 1) * 255.0

    def normalize(x: torch.Tensor) -> torch.Tensor:
        out = (x.float() - mean) / std
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out

    return normalize


def is_convolutional(model: nn.Module) -> bool:
    """Convolutions beyond a patch embedding (two or more 2-d convolutions): channels-last pays off on GPUs."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) >= 2


def place(model: nn.Module, device: torch.device) -> bool:
    """Move ``model`` to ``device``; on a GPU also turn on cuDNN autotuning and, for a convolutional model,
    channels-last. Returns whether the inputs should be channels-last (never on a CPU)."""
    model.to(device)
    if device.type != "cuda":
        return False
    torch.cuda.set_device(device)  # the current device: autocast, bf16 support and NCCL all read it
    torch.backends.cudnn.benchmark = True  # input shapes are fixed within a trial: autotune each once
    channels_last = is_convolutional(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return channels_last


def process_group_backend(num_workers: int, use_gpu: bool, gpus_per_worker: float) -> str:
    """NCCL when each worker has a GPU of its own; gloo on CPUs and when a trial's workers may share one GPU
    (NCCL refuses two ranks on one device; gloo all-reduces CUDA tensors too)."""
    return "nccl" if use_gpu and (num_workers == 1 or gpus_per_worker >= 1) else "gloo"


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


def loaders(
    train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], spec: TrialSpec,
    test: tuple[torch.Tensor, torch.Tensor] | None = None, *, rank: int = 0, world: int = 1,
    pin_memory: bool = False,
) -> tuple[DataLoader, DataLoader, DataLoader | None]:
    """This worker's loaders over in-memory tensors (images or cached features): nothing is decoded per epoch.

    Each batch is one indexing of the tensors (no per-item collation); ``pin_memory`` (on GPUs) lets the copy to
    the device overlap the step before.
    """

    def loader(tensors: tuple[torch.Tensor, torch.Tensor], batch_size: int, shuffle: bool) -> DataLoader:
        batches = ShardBatches(len(tensors[1]), batch_size, rank=rank, world=world, shuffle=shuffle, seed=spec.seed)
        return DataLoader(TensorDataset(*tensors), sampler=batches, batch_size=None, pin_memory=pin_memory)

    test_loader = loader(test, spec.eval_batch_size, False) if test is not None else None
    return loader(train, spec.batch_size, True), loader(val, spec.eval_batch_size, False), test_loader


class DeviceBatches:
    """A loader's batches on ``device``, copied without blocking (from pinned memory when the loader pins)."""

    def __init__(self, loader: DataLoader, device: torch.device) -> None:
        if not isinstance(loader.sampler, ShardBatches):
            raise TypeError(f"DeviceBatches needs a loader built by train.loaders, got {type(loader.sampler)}")
        self.loader, self.device = loader, device
        self.sampler: ShardBatches = loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


@dataclass(frozen=True)
class Precision:
    """Mixed precision on GPUs: autocast to ``dtype``, with a gradient scaler for fp16. fp32 is a no-op."""

    name: str = "fp32"
    device_type: str = "cpu"

    @classmethod
    def resolve(cls, requested: str, device: torch.device) -> Precision:
        """What runs on ``device``: fp32 on CPUs and when asked; ``auto`` is bf16 where the GPU computes it
        natively, else fp16 (with a gradient scaler); bf16 and fp16 on a GPU as asked."""
        if device.type != "cuda" or requested == "fp32":
            return cls("fp32", device.type)
        if requested == "auto":
            requested = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        return cls(requested, device.type)

    @property
    def enabled(self) -> bool:
        return self.name != "fp32" and self.device_type == "cuda"

    def autocast(self) -> Any:
        dtype = torch.bfloat16 if self.name == "bf16" else torch.float16
        return torch.autocast(self.device_type, dtype=dtype, enabled=self.enabled)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.enabled and self.name == "fp16")


def train_epoch(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], normalize: Any,
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, loss_fn: nn.Module,
    precision: Precision = Precision(), scaler: torch.amp.GradScaler | None = None,
) -> tuple[float, int]:
    """One pass over the training subset: (mean loss, samples seen), over all workers' shards.

    The loss is summed on the device and read once, after the pass: no step waits for the host.
    """
    model.train()
    scaler = scaler if scaler is not None else precision.scaler()
    total: torch.Tensor | None = None
    seen = 0
    for x, y in batches:
        with precision.autocast():
            loss = loss_fn(model(normalize(x)), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step_total = loss.detach().float().reshape(1) * len(y)
        total = step_total if total is None else total + step_total
        seen += len(y)
    loss_sum, samples = _all_reduced(total, seen, model, width=1)
    return loss_sum / max(samples, 1.0), int(samples)


class Evaluation(NamedTuple):
    loss: float
    acc: float
    images: int  # counted over all workers, each once


@torch.no_grad()
def evaluation(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], normalize: Any, loss_fn: nn.Module,
    precision: Precision = Precision(),
) -> Evaluation:
    """Loss, accuracy and images counted on a split (validation or test), summed over all workers.

    A DDP model is evaluated unwrapped (evaluation needs no gradient synchronisation, and workers may hold
    different numbers of batches), with rank 0's buffers, the ones its checkpoint holds.
    """
    net = model.module if isinstance(model, DistributedDataParallel) else model
    net.eval()
    _broadcast_buffers(net)
    sums: torch.Tensor | None = None
    count = 0
    for x, y in batches:
        with precision.autocast():
            logits = net(normalize(x)).float()
        batch = torch.stack([loss_fn(logits, y).double() * len(y), (logits.argmax(1) == y).sum().double()])
        sums = batch if sums is None else sums + batch
        count += len(y)
    loss_sum, correct, images = _all_reduced(sums, count, net, width=2)
    return Evaluation(loss_sum / max(images, 1.0), correct / max(images, 1.0), int(images))


def evaluate(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], normalize: Any, loss_fn: nn.Module,
    precision: Precision = Precision(),
) -> tuple[float, float]:
    """(mean loss, accuracy) on the validation split, summed over all workers."""
    result = evaluation(model, batches, normalize, loss_fn, precision)
    return result.loss, result.acc


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduced(sums: torch.Tensor | None, count: int, model: nn.Module, width: int) -> list[float]:
    """``[*sums, count]`` summed over all workers by one all-reduce on the training device (the tensor a CUDA-only
    backend such as NCCL requires), then read on the host once."""
    device = sums.device if sums is not None else _device_of(model)
    local = sums.to(torch.float64) if sums is not None else torch.zeros(width, dtype=torch.float64, device=device)
    totals = torch.cat([local, torch.tensor([float(count)], dtype=torch.float64, device=device)])
    if _distributed():
        torch.distributed.all_reduce(totals)
    return [float(v) for v in totals.tolist()]


def _broadcast_buffers(model: nn.Module) -> None:
    """Every worker gets rank 0's buffers (BatchNorm statistics drift apart in each worker's last steps)."""
    if _distributed() and torch.distributed.get_world_size() > 1:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@dataclass
class Cost:
    """Cumulative cost of a trial: what the report turns into compute-to-target.

    ``wall_s``/``device_s`` count training and validation; ``startup_s`` (device-seconds from the trial's start to
    its first training step: process start, imports, model build, data) is kept apart, as are passes shared
    with other trials (the feature cache), which the tables charge to every trial that uses them.
    """

    wall_s: float = 0.0
    device_s: float = 0.0
    samples_seen: int = 0
    train_flops: float = 0.0
    startup_s: float = 0.0

    def add(self, seconds: float, devices: float, samples: int, flops_per_sample: float) -> None:
        self.wall_s += seconds
        self.device_s += seconds * devices
        self.samples_seen += samples
        self.train_flops += flops_per_sample * samples


@dataclass
class Stepper:
    """What an epoch needs: the network, how inputs are normalised, its optimizer, schedule, loss and precision."""

    net: nn.Module
    normalize: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: nn.Module = field(default_factory=nn.CrossEntropyLoss)
    precision: Precision = field(default_factory=Precision)
    scaler: torch.amp.GradScaler | None = None

    def __post_init__(self) -> None:
        if self.scaler is None:
            self.scaler = self.precision.scaler()

    def train(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, int]:
        return train_epoch(self.net, batches, self.normalize, self.optimizer, self.scheduler, self.loss_fn,
                           self.precision, self.scaler)

    def evaluate(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Evaluation:
        return evaluation(self.net, batches, self.normalize, self.loss_fn, self.precision)


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float  # over all workers' shards
    samples: int  # seen by all workers
    val_loss: float
    val_acc: float
    seconds: float  # training and validation (a test pass, when asked for, is not counted)
    test_loss: float | None = None
    test_acc: float | None = None
    val_images: int = 0  # validation images counted, over all workers


def fit(
    stepper: Stepper, train: Iterable[Any], val: Iterable[Any], epochs: Iterable[int], *,
    test: Iterable[Any] | None = None, before_epoch: Callable[[int], None] | None = None,
) -> Iterator[EpochResult]:
    """The one epoch loop (Ray-free): train, validate (and test, when given), yield each epoch's result.

    The Ray Train worker, ``tlsearch pretrain`` and the benchmarks all run this loop.
    """
    for epoch in epochs:
        if before_epoch is not None:
            before_epoch(epoch)
        started = time.perf_counter()
        train_loss, seen = stepper.train(train)
        scores = stepper.evaluate(val)
        seconds = time.perf_counter() - started
        tested = stepper.evaluate(test) if test is not None else None
        yield EpochResult(epoch, train_loss, seen, scores.loss, scores.acc, seconds,
                          tested.loss if tested else None, tested.acc if tested else None, scores.images)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function: build, (resume), train, evaluate and report every epoch.

    Debugging hook (tests, ``scripts/gpu_check.py``): with ``TLSEARCH_DEBUG_DIR`` naming a folder in the workers'
    environment, every worker writes ``<run>-rank<rank>.json`` there after each epoch (see :func:`_debug_record`):
    its rank, world size, device (and GPU UUID), process-group backend, precision, channels-last, its training
    shard and validation share of each epoch (positions in the trial's subset and split) and the metrics it
    reported.
    """
    import ray
    import ray.train
    import ray.train.torch

    process_started = time.perf_counter()
    spec: TrialSpec = config["spec"]
    if "seed" in config["hp"]:  # a confirmation run repeats a configuration with its own seed
        spec = replace(spec, seed=int(config["hp"]["seed"]))
    hp = Hyper.from_config(config["hp"])
    # Start-up is counted from the trial's start (its Tune function), or, for a worker restarted from a
    # checkpoint, from this process's start.
    since = float(config.get("started_at") or time.time())
    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    payload: Payload = ray.get(config["payload"][0])

    device = ray.train.torch.get_device()
    precision = Precision.resolve(spec.precision, device)
    model, plan = build_model(spec, hp, payload.source)
    channels_last = place(model, device)
    inputs = trial_inputs(model, hp, spec, payload, normalizer(spec.input_spec, device, channels_last),
                          config.get("feature_cache"), with_test=spec.evaluate_test, rank=rank, world=world,
                          pin_memory=device.type == "cuda")
    optimizer, scheduler = make_optimizer(model, plan, hp, spec.weight_decay, spec.max_epochs * len(inputs.train))
    scaler = precision.scaler()
    cost, first_epoch = Cost(), 1
    history: list[dict[str, Any]] = []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            cost, first_epoch, history = _restore(folder, model, optimizer, scheduler, scaler)
        since = time.time() - (time.perf_counter() - process_started)
    # A trial restarted by a resumed search gets a fresh result log from Tune (Tune holds no checkpoint of a
    # function trainable, so it restores none of its logs), and Tune may not have logged the last epoch before
    # the driver died: say every checkpointed epoch again, flagged, so the tables keep one row per epoch.
    for past in history:
        ray.train.report({**past, "restored": True})
    if first_epoch > spec.max_epochs:
        return

    net = ray.train.torch.prepare_model(inputs.net)  # DDP with several workers; the loaders are already sharded
    train_loader, val_loader = DeviceBatches(inputs.train, device), DeviceBatches(inputs.val, device)
    test_loader = DeviceBatches(inputs.test, device) if inputs.test is not None else None
    stepper = Stepper(net, inputs.normalize, optimizer, scheduler, precision=precision, scaler=scaler)
    static = {
        "train_size": inputs.train_size, "num_groups": plan.num_groups, "flops_per_sample": inputs.flops_per_sample,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "node_id": ray.get_runtime_context().get_node_id(), "feature_cache": inputs.cache_status,
        **inputs.shared_pass,
    }
    devices = world * spec.devices_per_worker
    # This process's start-up: from the trial's start to here, less the shared passes it ran for other trials.
    cost.startup_s += max(0.0, time.time() - since - inputs.shared_seconds) * devices
    debug_dir = os.environ.get(DEBUG_ENV)
    setup = {"run": context.get_experiment_name(), "rank": rank, "world": world, **_device_facts(device),
             "precision": precision.name, "channels_last": channels_last, "started_at": time.time() - (
                 time.perf_counter() - process_started), "train_size": inputs.train_size}

    def before_epoch(epoch: int) -> None:
        train_loader.sampler.set_epoch(epoch)
        inject_fault(epoch)

    for result in fit(stepper, train_loader, val_loader, range(first_epoch, spec.max_epochs + 1),
                      test=test_loader, before_epoch=before_epoch):
        cost.add(result.seconds, devices, result.samples, inputs.flops_per_sample)
        metrics = {"epoch": result.epoch, "val_acc": result.val_acc, "val_loss": result.val_loss,
                   "train_loss": result.train_loss, **asdict(cost), **static}
        if result.test_acc is not None:
            metrics |= {"test_acc": result.test_acc, "test_loss": result.test_loss}
        history.append(metrics)
        if debug_dir:
            _debug_record(debug_dir, setup, result, metrics, train_loader, val_loader, scaler)
        _report(history, model, optimizer, scheduler, cost, rank, scaler)


@dataclass(frozen=True)
class TrialInputs:
    """What a trial trains (the model, or its classifier alone on cached features) and on what."""

    net: nn.Module
    normalize: Any
    train: DataLoader
    val: DataLoader
    test: DataLoader | None
    train_size: int
    flops_per_sample: float
    cache_status: str  # off | miss | hit
    passes: tuple[features.Pass, ...] = ()  # shared frozen-part passes its inputs come from
    shared_seconds: float = 0.0  # seconds this trial spent computing passes (charged to every user instead)

    @property
    def shared_pass(self) -> dict[str, Any]:
        """The passes, as reported each epoch; the tables split each one's cost over the trials that used it."""
        return {"feature_passes": json.dumps([asdict(p) for p in self.passes])} if self.passes else {}


def trial_inputs(
    model: nn.Module, hp: Hyper, spec: TrialSpec, payload: Payload, normalize: Any, cache: Any,
    with_test: bool = False, *, rank: int = 0, world: int = 1, pin_memory: bool = False,
) -> TrialInputs:
    """The whole model on images; or, for a linear probe, its classifier on frozen features computed once.

    ``model`` and ``normalize`` are on the training device; the loaders are worker ``rank``'s of ``world``.
    """
    train_idx, val_idx = subset(payload, hp)
    test_idx = torch.from_numpy(payload.test) if with_test and payload.test is not None else None
    labels = payload.labels
    loss_fn = nn.CrossEntropyLoss()
    cached = _classifier_features(cache, model, hp, payload, (train_idx, val_idx, test_idx), normalize,
                                  spec.devices_per_worker) if spec.feature_cache else None
    if cached is None:
        flops, _ = models.train_flops_per_sample(model, spec.input_spec, loss_fn)
        sets = [(payload.images[i], labels[i]) if i is not None else None for i in (train_idx, val_idx, test_idx)]
        train, val, test = loaders(sets[0], sets[1], spec, sets[2],  # type: ignore[arg-type]
                                   rank=rank, world=world, pin_memory=pin_memory)
        return TrialInputs(model, normalize, train, val, test, len(train_idx), flops, "off")
    classifier: nn.Module = model.get_classifier()  # type: ignore[operator]
    test_set = (cached.test, labels[test_idx]) if cached.test is not None and test_idx is not None else None
    train, val, test = loaders((cached.train, labels[train_idx]), (cached.val, labels[val_idx]), spec, test_set,
                               rank=rank, world=world, pin_memory=pin_memory)
    return TrialInputs(
        classifier, _identity, train, val, test, len(train_idx),
        _classifier_flops(classifier, cached.train[:2], loss_fn), "miss" if cached.computed_images else "hit",
        cached.passes, sum(p.seconds for p, here in zip(cached.passes, cached.here, strict=True) if here),
    )


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _classifier_features(
    cache: Any, model: nn.Module, hp: Hyper, payload: Payload,
    idx: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None], normalize: Any, devices: float,
) -> features.Features | None:
    """Cached frozen-part outputs for a linear probe, or None when the trial must run the whole model."""
    train_idx, val_idx, test_idx = idx
    if not features.eligible(model):
        return None
    probe = normalize(payload.images[val_idx[:4]].to(_device_of(model)))  # the normaliser lives on that device
    if not features.matches(model, probe):
        return None
    flops = features.forward_flops_per_image(model, probe[:2])
    keys = [("train", hp.freeze_depth, hp.data_fraction, payload.split_seed), ("val", hp.freeze_depth)]
    sets = [train_idx, val_idx]
    if test_idx is not None:
        keys.append(("test", hp.freeze_depth))
        sets.append(test_idx)
    got = [features.cached(cache, key, model, payload.images[i], normalize, flops, devices)
           for key, i in zip(keys, sets, strict=True)]
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


FAULTS_ENV = "TLSEARCH_FAULTS"


def inject_fault(epoch: int) -> None:
    """Fault injection for tests: ``TLSEARCH_FAULTS`` names a JSON file, e.g. ``{"raise_at_epoch": 2}``.

    Keys: ``raise_at_epoch``, ``hang_at_epoch`` (sleeps for an hour), ``kill_at_epoch`` with ``kill_marker`` (a
    path: the worker SIGKILLs itself once, the first time, and leaves the marker so a restart goes on).
    """
    path = os.environ.get(FAULTS_ENV)
    if not path or not os.path.isfile(path):
        return
    with open(path) as fh:
        faults = json.load(fh)
    if faults.get("raise_at_epoch") == epoch:
        raise RuntimeError(f"injected fault at epoch {epoch}")
    if faults.get("hang_at_epoch") == epoch:
        time.sleep(3600)
    marker = faults.get("kill_marker")
    if faults.get("kill_at_epoch") == epoch and marker and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), 9)


DEBUG_ENV = "TLSEARCH_DEBUG_DIR"


def _device_facts(device: torch.device) -> dict[str, Any]:
    """The device a worker trains on, its GPU's UUID (so two workers on one GPU can be told apart from two GPUs)
    and the process group's backend."""
    gpu = str(torch.cuda.get_device_properties(device).uuid) if device.type == "cuda" else None
    backend = str(torch.distributed.get_backend()) if _distributed() else None
    return {"device": str(device), "gpu_uuid": gpu, "backend": backend,
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}


def _debug_record(
    folder: str, setup: dict[str, Any], result: EpochResult, metrics: dict[str, Any], train: DeviceBatches,
    val: DeviceBatches, scaler: torch.amp.GradScaler,
) -> None:
    """Add this epoch to the worker's ``<folder>/<run>-rank<rank>.json`` (rewritten whole, atomically):
    ``setup`` (rank, world, device, precision, ...), then per epoch its training shard (``train``: positions in
    the trial's subset), its validation share (``val``: positions in the split), the validation images counted
    over all workers (``val_images``), the gradient scaler's scale (fp16) and the metrics reported."""
    path = os.path.join(folder, f"{setup['run']}-rank{setup['rank']}.json")
    record: dict[str, Any] = {**setup, "epochs": []}
    if os.path.exists(path):
        with open(path) as fh:
            record["epochs"] = json.load(fh)["epochs"]
    record["epochs"].append({
        "epoch": result.epoch, "train": train.sampler.last, "val": val.sampler.last,
        "val_images": result.val_images, "scale": scaler.get_scale() if scaler.is_enabled() else None,
        "ended_at": time.time(), "metrics": metrics,
    })
    os.makedirs(folder, exist_ok=True)
    with open(path + ".tmp", "w") as fh:
        json.dump(record, fh, default=float)
    os.replace(path + ".tmp", path)


def _report(
    history: list[dict[str, Any]], model: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, cost: Cost, rank: int,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Report the newest epoch of ``history``; rank 0 attaches the checkpoint."""
    import ray.train

    if rank != 0:
        ray.train.report(history[-1])
        return
    with tempfile.TemporaryDirectory() as folder:
        _save(folder, model, optimizer, scheduler, cost, history, scaler)
        ray.train.report(history[-1], checkpoint=ray.train.Checkpoint.from_directory(folder))


def _save(
    folder: str, model: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, cost: Cost, history: list[dict[str, Any]],
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Model (safetensors), optimizer, scheduler, gradient scaler (fp16) and RNG state, and every epoch's metrics."""
    inner: nn.Module = getattr(model, "module", model)
    state = {k: v.detach().contiguous().cpu() for k, v in inner.state_dict().items()}
    save_safetensors(state, os.path.join(folder, "model.safetensors"))
    train_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "torch_rng": torch.get_rng_state()}
    if scaler is not None and scaler.is_enabled():
        train_state["scaler"] = scaler.state_dict()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        train_state["cuda_rng"] = torch.cuda.get_rng_state()
    torch.save(train_state, os.path.join(folder, "train_state.pt"))
    with open(os.path.join(folder, "progress.json"), "w") as fh:
        json.dump({"epoch": history[-1]["epoch"], "cost": asdict(cost), "history": history}, fh, default=float)


def _restore(
    folder: str, model: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler | None = None,
) -> tuple[Cost, int, list[dict[str, Any]]]:
    """Load a checkpoint into the model, optimizer, scheduler and scaler: (cost so far, next epoch, every epoch's
    metrics so far)."""
    model.load_state_dict(load_safetensors(os.path.join(folder, "model.safetensors")))
    state = torch.load(os.path.join(folder, "train_state.pt"), map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and scaler.is_enabled() and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"])
    with open(os.path.join(folder, "progress.json")) as fh:
        progress = json.load(fh)
    return Cost(**progress["cost"]), int(progress["epoch"]) + 1, list(progress.get("history", []))
