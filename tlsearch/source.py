"""The source model: pretrain one, so the whole transfer pipeline runs offline (`tlsearch pretrain`).

A plain in-process PyTorch loop (the same epoch functions the Ray workers use): train a timm model from scratch
on the ``source`` half of a dataset and write safetensors plus a JSON sidecar (model, classes, input size,
normalisation, epochs, accuracy) that ``tlsearch run --weights`` reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from tlsearch import data as data_mod
from tlsearch import models
from tlsearch.models import InputSpec
from tlsearch.train import Stepper, fit, normalizer


@dataclass(frozen=True)
class PretrainResult:
    path: Path
    val_acc: float
    epochs: int
    wall_s: float
    cached: bool


def pretrain(
    dataset: str, model_name: str, out: str | Path, *, epochs: int = 1, image_size: int | None = 32,
    data_dir: str | None = None, lr: float = 3e-3, batch_size: int = 128, seed: int = 0, force: bool = False,
    echo: Callable[[str], None] = print,
) -> PretrainResult:
    """Train ``model_name`` on the source half of ``dataset``; reuse ``out`` if it matches the request."""
    out = Path(out)
    models.check_model_name(model_name)
    meta = models.read_sidecar(out) if out.is_file() else {}
    request = {"model": model_name, "dataset": dataset, "epochs": epochs, "image_size": image_size, "seed": seed}
    if not force and meta and all(meta.get(k) == v for k, v in request.items()):
        echo(f"tlsearch: reusing {out} (val_acc {meta['val_acc']:.3f}); pass --force to train again")
        return PretrainResult(out, float(meta["val_acc"]), epochs, 0.0, cached=True)
    if epochs < 1:
        raise models.ModelError(f"epochs must be >= 1, got {epochs}")
    started = time.perf_counter()
    torch.manual_seed(seed)
    source = data_mod.load(dataset, "source", data_dir)
    in_chans = source.images.shape[-1]
    probe = models.create(model_name, num_classes=len(source.classes), in_chans=in_chans)
    size = image_size or models.input_spec(probe).size
    images = data_mod.to_model_input(source, in_chans, size)
    mean = tuple(float(m) for m in images.float().mean((0, 2, 3)) / 255.0)
    std = tuple(float(s) for s in images.float().std((0, 2, 3)) / 255.0)
    spec = InputSpec(in_chans, size, mean, std)
    labels = torch.from_numpy(source.labels)
    pool, val = data_mod.stratified_split(source.labels, 2000, seed)
    model = probe
    normalize = normalizer(spec, torch.device("cpu"))
    train_loader = _loader(images, labels, pool, batch_size, shuffle=True, seed=seed)
    val_loader = _loader(images, labels, val, 512, shuffle=False, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(train_loader))
    stepper = Stepper(model, normalize, optimizer, scheduler)
    val_acc = 0.0
    for result in fit(stepper, train_loader, val_loader, range(1, epochs + 1)):
        val_acc = result.val_acc
        echo(f"tlsearch: pretrain epoch {result.epoch}/{epochs}: train_loss {result.train_loss:.3f}, "
             f"val_acc {val_acc:.3f}")
    wall = time.perf_counter() - started
    sidecar = {
        **request, "num_classes": len(source.classes), "classes": list(source.classes),
        "input": {"in_chans": in_chans, "size": size, "mean": list(mean), "std": list(std)},
        "val_acc": val_acc, "train_images": int(len(pool)), "wall_s": wall,
        # what the source model cost, in the tables' unit: seconds x the CPUs (torch threads) it held
        "device_s": wall * torch.get_num_threads(),
    }
    models.save(model, out, sidecar)
    echo(f"tlsearch: wrote {out} and {models.sidecar_path(out).name} ({wall:.0f} s)")
    return PretrainResult(out, val_acc, epochs, wall, cached=False)


def _loader(
    images: torch.Tensor, labels: torch.Tensor, idx: np.ndarray, batch: int, shuffle: bool, seed: int
) -> DataLoader:
    t = torch.from_numpy(idx)
    return DataLoader(
        TensorDataset(images[t], labels[t]), batch_size=batch, shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
    )
