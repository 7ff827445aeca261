"""The loop: what one Ray Train worker does for one trial, one small named step at a time.

The worker gets the decoded data and the source weights from Ray's object store, builds and freezes the
model, trains it for up to ``max_epochs`` and reports, every epoch, the validation metrics and the cumulative
cost (wall seconds, device-seconds, samples seen, FLOPs measured with the freeze in place). Every epoch it also
checkpoints model, optimizer, scheduler, epoch, cost and RNG state, so a restarted worker continues.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlsearch import data as data_mod
from tlsearch import features, models
from tlsearch.config import DIMENSIONS
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
    precision: str = "fp32"
    feature_cache: bool = True
    evaluate_test: bool = False  # only `tlsearch confirm` evaluates the test set every epoch; a search never does


@dataclass(frozen=True)
class Hyper:
    """What the searcher chose for one trial: one field per name in :data:`tlsearch.config.DIMENSIONS`."""

    init: str
    freeze_depth: int
    head_lr: float
    backbone_lr: float
    data_fraction: float

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Hyper:
        casts = {"string": str, "int32": int, "float64": float}
        return cls(**{name: casts[kind](config[name]) for name, kind in DIMENSIONS.items()})


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


def normalizer(spec: InputSpec, device: torch.device) -> Any:
    mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1) * 255.0
    std = torch.tensor(spec.std, device=device).view(1, -1, 1, 1) * 255.0

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return (x.float() - mean) / std

    return normalize


def subset(payload: Payload, hp: Hyper) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the trial's training subset (nested, stratified) and of the shared validation split."""
    labels = payload.labels.numpy()
    train_idx = data_mod.nested_fraction(labels, payload.pool, hp.data_fraction, payload.split_seed)
    return torch.from_numpy(train_idx), torch.from_numpy(payload.val)


def loaders(
    train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], spec: TrialSpec,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[DataLoader, DataLoader, DataLoader | None]:
    """Loaders over in-memory tensors (images or cached features): nothing is decoded per epoch."""
    generator = torch.Generator().manual_seed(spec.seed)
    train_loader = DataLoader(
        TensorDataset(*train), batch_size=spec.batch_size, shuffle=True, generator=generator,
        drop_last=len(train[1]) > spec.batch_size,
    )
    test_loader = DataLoader(TensorDataset(*test), batch_size=spec.eval_batch_size) if test is not None else None
    return train_loader, DataLoader(TensorDataset(*val), batch_size=spec.eval_batch_size), test_loader


@dataclass(frozen=True)
class Precision:
    """Mixed precision on GPUs: autocast to ``dtype``, with a gradient scaler for fp16. fp32 is a no-op."""

    name: str = "fp32"
    device_type: str = "cpu"

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
    """One pass over the training subset; returns (mean loss, samples seen by this worker)."""
    model.train()
    scaler = scaler or precision.scaler()
    total, seen = 0.0, 0
    for x, y in batches:
        with precision.autocast():
            loss = loss_fn(model(normalize(x)), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total += loss.item() * len(y)
        seen += len(y)
    return total / max(seen, 1), seen


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], normalize: Any, loss_fn: nn.Module,
    precision: Precision = Precision(),
) -> tuple[float, float]:
    """(mean loss, accuracy) on the validation split, summed over all workers."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    for x, y in batches:
        with precision.autocast():
            logits = model(normalize(x)).float()
        sums += torch.tensor([loss_fn(logits, y).item() * len(y), (logits.argmax(1) == y).sum().item(), len(y)])
    sums = _all_reduce(sums)
    count = max(float(sums[2]), 1.0)
    return float(sums[0]) / count, float(sums[1]) / count


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = t.to(torch.float64)
        torch.distributed.all_reduce(t)
    return t


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

    def evaluate(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
        return evaluate(self.net, batches, self.normalize, self.loss_fn, self.precision)


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    samples: int  # seen by this worker
    val_loss: float
    val_acc: float
    seconds: float  # training and validation (a test pass, when asked for, is not counted)
    test_loss: float | None = None
    test_acc: float | None = None


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
        val_loss, val_acc = stepper.evaluate(val)
        seconds = time.perf_counter() - started
        test_loss, test_acc = stepper.evaluate(test) if test is not None else (None, None)
        yield EpochResult(epoch, train_loss, seen, val_loss, val_acc, seconds, test_loss, test_acc)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function: build, (resume), train, evaluate and report every epoch."""
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
    world = context.get_world_size()
    payload: Payload = ray.get(config["payload"][0])

    model, plan = build_model(spec, hp, payload.source)
    device = ray.train.torch.get_device()
    inputs = trial_inputs(model.to(device), hp, spec, payload, normalizer(spec.input_spec, device),
                          config.get("feature_cache"), with_test=spec.evaluate_test)
    steps = spec.max_epochs * max(1, len(inputs.train) // world)
    optimizer, scheduler = make_optimizer(model, plan, hp, spec.weight_decay, steps)
    cost, first_epoch = Cost(), 1
    history: list[dict[str, Any]] = []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            cost, first_epoch, history = _restore(folder, model, optimizer, scheduler)
        since = time.time() - (time.perf_counter() - process_started)
    # A trial restarted by a resumed search gets a fresh result log from Tune (Tune holds no checkpoint of a
    # function trainable, so it restores none of its logs), and Tune may not have logged the last epoch before
    # the driver died: say every checkpointed epoch again, flagged, so the tables keep one row per epoch.
    for past in history:
        ray.train.report({**past, "restored": True})
    if first_epoch > spec.max_epochs:
        return

    net = ray.train.torch.prepare_model(inputs.net)
    train_loader = ray.train.torch.prepare_data_loader(inputs.train)
    val_loader = ray.train.torch.prepare_data_loader(inputs.val)
    test_loader = ray.train.torch.prepare_data_loader(inputs.test) if inputs.test is not None else None
    stepper = Stepper(net, inputs.normalize, optimizer, scheduler, precision=Precision(spec.precision, device.type))
    static = {
        "train_size": inputs.train_size, "num_groups": plan.num_groups, "flops_per_sample": inputs.flops_per_sample,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "node_id": ray.get_runtime_context().get_node_id(), "feature_cache": inputs.cache_status,
        **inputs.shared_pass,
    }
    devices = world * spec.devices_per_worker
    # This process's start-up: from the trial's start to here, less the shared passes it ran for other trials.
    cost.startup_s += max(0.0, time.time() - since - inputs.shared_seconds) * devices

    def before_epoch(epoch: int) -> None:
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # type: ignore[union-attr]
        inject_fault(epoch)

    for result in fit(stepper, train_loader, val_loader, range(first_epoch, spec.max_epochs + 1),
                      test=test_loader, before_epoch=before_epoch):
        cost.add(result.seconds, devices, result.samples * world, inputs.flops_per_sample)
        metrics = {"epoch": result.epoch, "val_acc": result.val_acc, "val_loss": result.val_loss,
                   "train_loss": result.train_loss, **asdict(cost), **static}
        if result.test_acc is not None:
            metrics |= {"test_acc": result.test_acc, "test_loss": result.test_loss}
        history.append(metrics)
        _report(history, model, optimizer, scheduler, cost, context.get_world_rank())


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
    with_test: bool = False,
) -> TrialInputs:
    """The whole model on images; or, for a linear probe, its classifier on frozen features computed once."""
    train_idx, val_idx = subset(payload, hp)
    test_idx = torch.from_numpy(payload.test) if with_test and payload.test is not None else None
    labels = payload.labels
    loss_fn = nn.CrossEntropyLoss()
    cached = _classifier_features(cache, model, hp, payload, (train_idx, val_idx, test_idx), normalize,
                                  spec.devices_per_worker) if spec.feature_cache else None
    if cached is None:
        flops, _ = models.train_flops_per_sample(model, spec.input_spec, loss_fn)
        sets = [(payload.images[i], labels[i]) if i is not None else None for i in (train_idx, val_idx, test_idx)]
        train, val, test = loaders(sets[0], sets[1], spec, sets[2])  # type: ignore[arg-type]
        return TrialInputs(model, normalize, train, val, test, len(train_idx), flops, "off")
    classifier: nn.Module = model.get_classifier()  # type: ignore[operator]
    test_set = (cached.test, labels[test_idx]) if cached.test is not None and test_idx is not None else None
    train, val, test = loaders((cached.train, labels[train_idx]), (cached.val, labels[val_idx]), spec, test_set)
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
    if not features.eligible(model) or not features.matches(model, normalize(payload.images[val_idx[:4]])):
        return None
    flops = features.forward_flops_per_image(model, normalize(payload.images[val_idx[:2]]))
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


def _report(
    history: list[dict[str, Any]], model: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, cost: Cost, rank: int,
) -> None:
    """Report the newest epoch of ``history``; rank 0 attaches the checkpoint."""
    import ray.train

    if rank != 0:
        ray.train.report(history[-1])
        return
    with tempfile.TemporaryDirectory() as folder:
        _save(folder, model, optimizer, scheduler, cost, history)
        ray.train.report(history[-1], checkpoint=ray.train.Checkpoint.from_directory(folder))


def _save(
    folder: str, model: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, cost: Cost, history: list[dict[str, Any]],
) -> None:
    """Model (safetensors), optimizer, scheduler and RNG state, and the metrics of every epoch so far."""
    inner: nn.Module = getattr(model, "module", model)
    state = {k: v.detach().contiguous().cpu() for k, v in inner.state_dict().items()}
    save_safetensors(state, os.path.join(folder, "model.safetensors"))
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
         "torch_rng": torch.get_rng_state()},
        os.path.join(folder, "train_state.pt"),
    )
    with open(os.path.join(folder, "progress.json"), "w") as fh:
        json.dump({"epoch": history[-1]["epoch"], "cost": asdict(cost), "history": history}, fh, default=float)


def _restore(
    folder: str, model: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[Cost, int, list[dict[str, Any]]]:
    """Load a checkpoint into the model and optimizer: (cost so far, next epoch, every epoch's metrics so far)."""
    model.load_state_dict(load_safetensors(os.path.join(folder, "model.safetensors")))
    state = torch.load(os.path.join(folder, "train_state.pt"), map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    with open(os.path.join(folder, "progress.json")) as fh:
        progress = json.load(fh)
    return Cost(**progress["cost"]), int(progress["epoch"]) + 1, list(progress.get("history", []))
