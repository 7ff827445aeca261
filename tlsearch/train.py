"""The loop: one Ray-free epoch loop (:func:`fit`) and the small named steps it is made of.

The Ray Train worker (:mod:`tlsearch.worker`), ``tlsearch pretrain`` and the benchmarks all run it. Training sums
its loss on the device and reads it once per pass; validation and test sums are all-reduced on the training device
(the tensor a CUDA-only backend such as NCCL requires), so every worker reports the same metrics. On a GPU the
defaults are what GPU users expect: cuDNN autotuning, channels-last for convolutional models and mixed precision
(:meth:`Precision.resolve`); none of them changes a CPU run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tlsearch import models
from tlsearch.config import Hyper
from tlsearch.models import FreezePlan, InputSpec, SourceWeights
from tlsearch.spec import TrialSpec


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
