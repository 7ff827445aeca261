"""The Ray Train worker: what one worker does for one trial.

It gets the decoded data and the source weights from Ray's object store, builds and freezes the model, trains it
for up to ``max_epochs`` with :func:`tlsearch.train.fit` and reports, every epoch, the validation metrics and the
cumulative cost (wall seconds, device-seconds, samples seen, FLOPs measured with the freeze in place). Every epoch
it also checkpoints model, optimizer, scheduler, gradient scaler, epoch, cost and RNG state, so a restarted worker
continues.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, replace
from typing import Any

import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors
from torch import nn

from tlsearch.config import Hyper
from tlsearch.inputs import DeviceBatches, Payload, trial_inputs
from tlsearch.spec import TrialSpec
from tlsearch.train import (
    Cost,
    EpochResult,
    Precision,
    Stepper,
    _distributed,
    build_model,
    fit,
    make_optimizer,
    normalizer,
    place,
)


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
    spec = spec.for_model(hp.model)  # the trial's model among the searched ones: its input spec
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
    model, plan = build_model(spec, hp, payload.source_for(spec.model))
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
        **inputs.shared_pass, **inputs.facts,
    }
    devices = world * spec.devices_per_worker  # the trial's model's own (search.trial.for_trial)
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
