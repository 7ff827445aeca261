"""Shared helpers for the benchmark scripts: the target data as a search prepares it, machine facts, results.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlsearch import data as data_mod
from tlsearch import inputs
from tlsearch.models import InputSpec

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.md"
MODEL = "resnet10t"
SIZE = 32
SEED = 0
# One grey channel, fixed normalisation: the benchmarks measure cost, not accuracy.
SPEC = InputSpec(in_chans=1, size=SIZE, mean=(0.5,), std=(0.25,))
SHARED_NOTE = (
    f"load average at start {', '.join(f'{v:.1f}' for v in os.getloadavg())} (the machine may be shared with "
    "other processes); variants interleaved so any load hits all of them alike, ratios are the result"
)


def target_data(
    n_train: int, dataset: str = "fashion-mnist-split"
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """(uint8 images N x 1 x 32 x 32, labels, train pool of ~n_train stratified indices, validation indices).

    Built the way ``search.prepare`` builds the payload: ``data.load`` -> ``to_model_input`` -> ``stratified_split``,
    then a nested, stratified fraction of the pool so the training subset holds about ``n_train`` images.
    """
    target = data_mod.load(dataset, "target")
    images = data_mod.to_model_input(target, SPEC.in_chans, SPEC.size)
    labels = torch.from_numpy(target.labels)
    pool, val = data_mod.stratified_split(target.labels, 1000, SEED)
    subset = data_mod.nested_fraction(target.labels, pool, min(1.0, n_train / len(pool)), SEED)
    return images, labels, subset, val


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> str:
    import timm

    try:
        import ray

        ray_version = ray.__version__
    except ImportError:  # pragma: no cover - ray is a dependency, but the benchmarks never start it
        ray_version = "n/a"
    return f"torch {torch.__version__}, timm {timm.__version__}, ray {ray_version}"


def machine() -> str:
    return f"{os.cpu_count()} CPU ({cpu_model()})"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A small Markdown table (also readable on a terminal)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def append_result(benchmark: str, numbers: str, verdict: str, quick: bool) -> None:
    """Append one row to benchmarks/results.md (created with a header the first time)."""
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Benchmark results\n\nOne row per run, appended by the scripts in this folder.\n\n"
            "| date (UTC) | benchmark | machine | versions | numbers | verdict |\n"
            "|---|---|---|---|---|---|\n"
        )
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    name = benchmark + (" --quick" if quick else "")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    row = [date, name, f"{machine()}; shared (load avg {load})", versions(), numbers, verdict]
    with RESULTS.open("a") as fh:
        fh.write("| " + " | ".join(c.replace("|", "/") for c in row) + " |\n")


def trial_train_loader(payload: Any, hp: Any, spec: Any) -> Any:
    """The training loader a trial builds (``inputs.subset`` + ``inputs.loaders``), over the trial's images."""

    train_idx, val_idx = inputs.subset(payload, hp)
    return inputs.loaders((payload.images[train_idx], payload.labels[train_idx]),
                         (payload.images[val_idx], payload.labels[val_idx]), spec)[0]
