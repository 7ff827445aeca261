"""Benchmark: training images per second streamed through Ray Data against the in-memory path, and the share of a
training step spent waiting for data.

Both sides train the same resnet10t (3 channels, 64 x 64, 3 classes, one thread, batch 64) from the same initial
weights with ``train.train_epoch`` on the same JPEG images of a generated Parquet set (row groups of 128):

* memory: the images decoded once (``data.load`` + ``to_model_input``), batches from ``inputs.loaders``, as a
  trial's worker gets them from the object store;
* stream: ``stream.dataset`` (read by row group, decoded and resized inside ``map_batches`` every epoch) iterated
  by ``stream.StreamBatches``, as a trial's worker iterates its ``get_dataset_shard("train")``, on a local 2-CPU
  Ray (the decode tasks take the CPU the training thread leaves).

Waiting is the time the loop spends in the loader's ``next()``: its share of the epoch is what the step lost to
data. Epochs alternate (ABBA) after one warm-up epoch each; medians are reported.

Run (it starts Ray): ``flock /tmp/ray.lock .venv/bin/python benchmarks/stream_vs_memory.py [--quick]``
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from _common import SEED, append_result, median, table
from torch import nn

from tlsearch import data, inputs, loading, models, stream, train
from tlsearch.spec import InputSpec, TrialSpec
from tlsearch.train import Hyper

MODEL, SIZE, BATCH, CLASSES = "resnet10t", 64, 64, 3
SPEC = InputSpec(3, SIZE, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
HP = Hyper(init="scratch", freeze_depth=0, head_lr=1e-3, backbone_lr=1e-3, data_fraction=1.0)


def write_set(folder: Path, rows: int) -> Path:
    """JPEG images at 96 px (resized to 64 when read), class-coloured gradients with noise, row groups of 128."""
    from PIL import Image

    rng = np.random.default_rng(SEED)
    ramp = np.linspace(0, 1, 96)[None, :, None] * np.linspace(0, 1, 96)[:, None, None]
    blobs = []
    for i in range(rows):
        pixels = np.eye(3)[i % CLASSES] * 200 * ramp + rng.normal(0, 20, (96, 96, 3))
        out = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=85)
        blobs.append(out.getvalue())
    pq.write_table(pa.table({"image": blobs, "label": [i % CLASSES for i in range(rows)]}),
                   folder / "train-0.parquet", row_group_size=128)
    return folder


class Waited:
    """The batches of ``source``, counting the seconds spent waiting for each."""

    def __init__(self, source: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.source, self.seconds = source, 0.0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = iter(self.source)
        while True:
            started = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - started
            yield batch


def epoch(model: nn.Module, source: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float, int]:
    """(images/s, share of the epoch waiting for data, images) of one training epoch."""
    plan = models.apply_freeze(model, 0)
    optimizer, scheduler = train.make_optimizer(model, plan, HP, 0.0, 100)
    waited = Waited(source)
    started = time.perf_counter()
    _, seen = train.train_epoch(model, waited, train.normalizer(SPEC, torch.device("cpu")), optimizer, scheduler,
                                nn.CrossEntropyLoss())
    seconds = time.perf_counter() - started
    return seen / seconds, waited.seconds / seconds, seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="512 images, 2 timed epochs per side")
    parser.add_argument("--rows", type=int, default=1536)
    parser.add_argument("--repeats", type=int, default=2, help="ABBA rounds (each: 2 epochs per side)")
    args = parser.parse_args()
    rows, repeats = (512, 1) if args.quick else (args.rows, args.repeats)
    import ray

    from tlsearch.search.session import start_ray

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    with tempfile.TemporaryDirectory() as folder:
        root = write_set(Path(folder), rows)
        decoded = data.load(str(root))
        images = data.to_model_input(decoded, 3, SIZE)
        labels = torch.from_numpy(decoded.labels)
        spec = TrialSpec(MODEL, CLASSES, SPEC, 1, BATCH, 256, 0.0, SEED, 1, 1.0)
        memory = inputs.loaders((images, labels), (images[:1], labels[:1]), spec)[0]
        found = loading.scan(str(root), 3, SIZE)
        start_ray(num_cpus=2)
        try:
            streamed = stream.StreamBatches(stream.dataset(found.source, np.arange(rows), found.labels), rows,
                                            BATCH, shuffle=True, seed=SEED)
            model = models.build(MODEL, CLASSES, None, SPEC)
            sides: dict[str, Any] = {"memory": memory, "stream": streamed}
            runs: dict[str, list[tuple[float, float, int]]] = {"memory": [], "stream": []}
            for name in sides:
                epoch(model, sides[name])  # warm-up: imports, Ray Data's first tasks, allocator
            for _ in range(repeats):
                for name in ("memory", "stream", "stream", "memory"):
                    runs[name].append(epoch(model, sides[name]))
        finally:
            ray.shutdown()
    rate = {k: median([r[0] for r in v]) for k, v in runs.items()}
    wait = {k: median([r[1] for r in v]) for k, v in runs.items()}
    ratio = rate["stream"] / rate["memory"]
    print(table(["side", "images/s", "waiting for data", "epochs"],
                [[k, f"{rate[k]:.0f}", f"{wait[k]:.1%}", len(runs[k])] for k in runs]))
    print(f"stream / memory throughput: {ratio:.3f}")
    numbers = (f"memory {rate['memory']:.0f} img/s (waiting {wait['memory']:.1%} of the epoch), stream "
               f"{rate['stream']:.0f} img/s (waiting {wait['stream']:.1%}), ratio {ratio:.3f}; {MODEL} 3x{SIZE}x{SIZE} "
               f"from {rows} JPEG 96 px in Parquet, batch {BATCH}, 1 training thread, {len(runs['stream'])} epochs "
               "per side")
    append_result("stream_vs_memory", numbers, "measured (no goal): what streaming costs a CPU trial here",
                  args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
