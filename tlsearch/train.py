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
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlsearch import data as data_mod
from tlsearch import features, models
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


@dataclass(frozen=True)
class Hyper:
    """What the searcher chose for one trial."""

    init: str
    freeze_depth: int
    head_lr: float
    backbone_lr: float
    data_fraction: float

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Hyper:
        return cls(
            init=str(config["init"]),
            freeze_depth=int(config["freeze_depth"]),
            head_lr=float(config["head_lr"]),
            backbone_lr=float(config["backbone_lr"]),
            data_fraction=float(config["data_fraction"]),
        )


@dataclass(frozen=True)
class Payload:
    """The search's decoded data and weights, put once in the object store and shared by every trial."""

    images: torch.Tensor  # uint8 N x C x H x W
    labels: torch.Tensor  # int64 N
    pool: np.ndarray  # indices trials draw their training subsets from
    val: np.ndarray  # validation indices, the same for every trial
    source: SourceWeights | None
    split_seed: int


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
    train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], spec: TrialSpec
) -> tuple[DataLoader, DataLoader]:
    """Loaders over in-memory tensors (images or cached features): nothing is decoded per epoch."""
    generator = torch.Generator().manual_seed(spec.seed)
    train_loader = DataLoader(
        TensorDataset(*train), batch_size=spec.batch_size, shuffle=True, generator=generator,
        drop_last=len(train[1]) > spec.batch_size,
    )
    return train_loader, DataLoader(TensorDataset(*val), batch_size=spec.eval_batch_size)


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
    """Cumulative cost of a trial: what the report turns into compute-to-target."""

    wall_s: float = 0.0
    device_s: float = 0.0
    samples_seen: int = 0
    train_flops: float = 0.0

    def add(self, seconds: float, devices: float, samples: int, flops_per_sample: float) -> None:
        self.wall_s += seconds
        self.device_s += seconds * devices
        self.samples_seen += samples
        self.train_flops += flops_per_sample * samples


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function: build, (resume), train, evaluate and report every epoch."""
    import ray
    import ray.train
    import ray.train.torch

    started = time.perf_counter()
    spec: TrialSpec = config["spec"]
    hp = Hyper.from_config(config["hp"])
    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    context = ray.train.get_context()
    world = context.get_world_size()
    payload: Payload = ray.get(config["payload"][0])

    model, plan = build_model(spec, hp, payload.source)
    device = ray.train.torch.get_device()
    inputs = trial_inputs(model.to(device), hp, spec, payload, normalizer(spec.input_spec, device),
                          config.get("feature_cache"))
    steps = spec.max_epochs * max(1, len(inputs.train) // world)
    optimizer, scheduler = make_optimizer(model, plan, hp, spec.weight_decay, steps)
    cost, first_epoch = Cost(train_flops=inputs.one_off_flops), 1
    history: list[dict[str, Any]] = []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            cost, first_epoch, history = _restore(folder, model, optimizer, scheduler)
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
    precision = Precision(spec.precision, device.type)
    scaler, loss_fn = precision.scaler(), nn.CrossEntropyLoss()
    static = {
        "train_size": inputs.train_size, "num_groups": plan.num_groups, "flops_per_sample": inputs.flops_per_sample,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "node_id": ray.get_runtime_context().get_node_id(), "feature_cache": inputs.cache_status,
    }
    for epoch in range(first_epoch, spec.max_epochs + 1):
        if hasattr(train_loader, "sampler") and hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        inject_fault(epoch)
        train_loss, seen = train_epoch(net, train_loader, inputs.normalize, optimizer, scheduler, loss_fn, precision,
                                       scaler)
        val_loss, val_acc = evaluate(net, val_loader, inputs.normalize, loss_fn, precision)
        now = time.perf_counter()
        cost.add(now - started, world * spec.devices_per_worker, seen * world, inputs.flops_per_sample)
        started = now
        metrics = {"epoch": epoch, "val_acc": val_acc, "val_loss": val_loss, "train_loss": train_loss,
                   **asdict(cost), **static}
        history.append(metrics)
        _report(history, model, optimizer, scheduler, cost, context.get_world_rank())


@dataclass(frozen=True)
class TrialInputs:
    """What a trial trains (the model, or its classifier alone on cached features) and on what."""

    net: nn.Module
    normalize: Any
    train: DataLoader
    val: DataLoader
    train_size: int
    flops_per_sample: float
    one_off_flops: float
    cache_status: str  # off | miss | hit


def trial_inputs(
    model: nn.Module, hp: Hyper, spec: TrialSpec, payload: Payload, normalize: Any, cache: Any
) -> TrialInputs:
    """The whole model on images; or, for a linear probe, its classifier on frozen features computed once."""
    train_idx, val_idx = subset(payload, hp)
    train_y, val_y = payload.labels[train_idx], payload.labels[val_idx]
    loss_fn = nn.CrossEntropyLoss()
    cached = _classifier_features(cache, model, hp, payload, train_idx, val_idx, normalize) if (
        spec.feature_cache) else None
    if cached is None:
        flops, _ = models.train_flops_per_sample(model, spec.input_spec, loss_fn)
        train, val = loaders((payload.images[train_idx], train_y), (payload.images[val_idx], val_y), spec)
        return TrialInputs(model, normalize, train, val, len(train_idx), flops, 0.0, "off")
    classifier: nn.Module = model.get_classifier()  # type: ignore[operator]
    train, val = loaders((cached.train, train_y), (cached.val, val_y), spec)
    return TrialInputs(
        classifier, _identity, train, val, len(train_idx), _classifier_flops(classifier, cached.train[:2], loss_fn),
        cached.forward_flops_per_image * cached.computed_images, "miss" if cached.computed_images else "hit",
    )


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _classifier_features(
    cache: Any, model: nn.Module, hp: Hyper, payload: Payload, train_idx: torch.Tensor, val_idx: torch.Tensor,
    normalize: Any,
) -> features.Features | None:
    """Cached frozen-part outputs for a linear probe, or None when the trial must run the whole model."""
    if not features.eligible(model) or not features.matches(model, normalize(payload.images[val_idx[:4]])):
        return None
    train, computed_train = features.cached(cache, ("train", hp.freeze_depth, hp.data_fraction), model,
                                            payload.images[train_idx], normalize)
    val, computed_val = features.cached(cache, ("val", hp.freeze_depth), model, payload.images[val_idx], normalize)
    flops = features.forward_flops_per_image(model, normalize(payload.images[val_idx[:2]]))
    return features.Features(train, val, computed_train + computed_val, flops)


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
