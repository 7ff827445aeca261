"""Benchmark 1: tlsearch's per-worker training step against a bare PyTorch loop.

Both sides train the same resnet10t (1 channel, 32x32, 5 classes) from the same initial weights on the same
~3,000 Fashion-MNIST target images, batch 64, one thread:

* tlsearch: ``train.train_epoch`` over the DataLoader ``inputs.loaders`` builds (TensorDataset of uint8 images,
  shuffled), with ``train.normalizer`` applied per batch and ``make_optimizer``'s AdamW + cosine schedule, as the
  worker does;
* bare: images normalised to float once up front, sliced into batches, ``model(x)``, loss, backward, AdamW step.

``--device cuda`` runs both on the GPU, each as its author would: tlsearch as the worker does there (batches
copied from pinned memory without blocking, ``train.place``'s channels-last and cuDNN autotuning, precision
``auto`` with its scaler), the bare loop on images normalised once and kept on the GPU (channels-last, the same
autocast and scaler), each epoch timed to ``torch.cuda.synchronize``.

Epochs of the two alternate (ABBA order) and the median over repeats is reported, so load from other processes
hits both sides alike. Goal (issue): tlsearch throughput >= 0.9 x bare.

Run: ``.venv/bin/python benchmarks/loop_vs_bare.py [--quick] [--repeats N] [--profile] [--device cuda]``
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import pstats
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from _common import (
    MODEL,
    SEED,
    SHARED_NOTE,
    SPEC,
    append_result,
    machine,
    median,
    table,
    target_data,
    versions,
)
from torch import nn

from tlsearch import inputs, train
from tlsearch.inputs import Payload
from tlsearch.spec import TrialSpec
from tlsearch.train import Hyper

BATCH = 64
GOAL = 0.9
HP = Hyper(init="scratch", freeze_depth=0, head_lr=1e-3, backbone_lr=1e-3, data_fraction=1.0)
Timing = tuple[float, float, int]  # (wall s, process CPU s, images)
CPU = torch.device("cpu")


def trial_spec() -> TrialSpec:
    return TrialSpec(
        model=MODEL, num_classes=5, input_spec=SPEC, max_epochs=1, batch_size=BATCH, eval_batch_size=256,
        weight_decay=0.01, seed=SEED, threads=1, devices_per_worker=1.0,
    )


def timed(fn: Callable[[], int], device: torch.device = CPU) -> Timing:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    seen = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu, seen


def train_batches(payload: Payload, spec: TrialSpec, device: torch.device) -> inputs.DeviceBatches:
    """The trial's training batches as the worker gets them (``inputs.subset`` + ``inputs.loaders``)."""
    train_idx, val_idx = inputs.subset(payload, HP)
    loader = inputs.loaders((payload.images[train_idx], payload.labels[train_idx]),
                           (payload.images[val_idx], payload.labels[val_idx]), spec,
                           pin_memory=device.type == "cuda")[0]
    return inputs.DeviceBatches(loader, device)


def tlsearch_epoch(initial: nn.Module, payload: Payload, spec: TrialSpec,
                   device: torch.device = CPU) -> Callable[[], int]:
    """A closure running one epoch exactly as ``train_loop_per_worker`` does (minus Ray and evaluation)."""
    model = copy.deepcopy(initial)
    plan = train.models.apply_freeze(model, HP.freeze_depth)
    channels_last = train.place(model, device)
    batches = train_batches(payload, spec, device)
    optimizer, scheduler = train.make_optimizer(model, plan, HP, spec.weight_decay, len(batches))
    normalize = train.normalizer(spec.input_spec, device, channels_last)
    precision = train.Precision.resolve(spec.precision, device)
    scaler = precision.scaler()
    loss_fn = nn.CrossEntropyLoss()

    def run() -> int:
        return train.train_epoch(model, batches, normalize, optimizer, scheduler, loss_fn, precision, scaler)[1]

    return run


def bare_epoch(initial: nn.Module, x: torch.Tensor, y: torch.Tensor,
               device: torch.device = CPU) -> Callable[[], int]:
    """A closure running one epoch of the plainest loop over pre-normalised float tensors (on ``device``)."""
    model = copy.deepcopy(initial).to(device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(device).contiguous(memory_format=torch.channels_last)
    y = y.to(device)
    dtype = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=on_gpu and dtype == torch.float16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=HP.head_lr, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss()
    n = (len(y) // BATCH) * BATCH  # drop_last, as inputs.loaders does

    def run() -> int:
        model.train()
        for i in range(0, n, BATCH):
            with torch.autocast(device.type, dtype=dtype, enabled=on_gpu):
                loss = loss_fn(model(x[i : i + BATCH]), y[i : i + BATCH])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return n

    return run


@dataclass(frozen=True)
class Measurement:
    device: str
    repeats: int
    seen: int  # images per tlsearch epoch
    wall: dict[str, list[float]]  # images/s per repeat, by side
    cpu: dict[str, list[float]]
    ratios_wall: list[float]
    ratios_cpu: list[float]
    loader_share: float  # DataLoader (+ copies) + normaliser alone, as a share of a tlsearch epoch
    loader_s: float

    @property
    def ratio(self) -> float:
        """The result: the median of the paired wall-clock ratios."""
        return median(self.ratios_wall)

    @property
    def ratio_cpu(self) -> float:
        return median(self.ratios_cpu)

    @property
    def of_medians(self) -> float:
        return median(self.wall["tlsearch"]) / median(self.wall["bare"])


def measure(n_images: int, repeats: int, device: torch.device = CPU,
            dataset: str = "fashion-mnist-split", profile: bool = False) -> Measurement:
    """Alternating epochs of both sides on ``device``; the paired throughput ratios."""
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    images, labels, subset, val = target_data(n_images, dataset)
    payload = Payload(images, labels, subset, val, None, SEED)
    spec = trial_spec()
    initial, _ = train.build_model(spec, HP, None)
    normalize = train.normalizer(spec.input_spec, CPU)
    idx = torch.from_numpy(subset)[torch.randperm(len(subset), generator=torch.Generator().manual_seed(SEED))]
    x_bare, y_bare = normalize(images[idx]).contiguous(), labels[idx].contiguous()

    # Fresh model + optimizer per side, reused over repeats (as epochs of a trial); one warm-up epoch each.
    sides = {"tlsearch": tlsearch_epoch(initial, payload, spec, device),
             "bare": bare_epoch(initial, x_bare, y_bare, device)}
    for run in sides.values():
        run()
    times: dict[str, list[Timing]] = {name: [] for name in sides}
    order = list(sides)
    for r in range(repeats):
        for name in order if r % 2 == 0 else order[::-1]:
            times[name].append(timed(sides[name], device))

    # How much of the tlsearch epoch is the DataLoader (+ copies) + normaliser alone (no model), for the diagnosis.
    batches = train_batches(payload, spec, device)
    on_device = train.normalizer(spec.input_spec, device)

    def loader_only() -> int:
        return sum(len(on_device(xb)) for xb, _ in batches)

    loader_s = median([timed(loader_only, device)[0] for _ in range(3)])
    if profile:
        for name, run in sides.items():
            prof = cProfile.Profile()
            prof.runcall(run)
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
            print(f"\n--- cProfile, one {name} epoch (top 12 by own time) ---")
            print("\n".join(out.getvalue().splitlines()[:40]))
    wall = {k: [t[2] / t[0] for t in v] for k, v in times.items()}
    cpu = {k: [t[2] / t[1] for t in v] for k, v in times.items()}
    return Measurement(
        device=str(device), repeats=repeats, seen=times["tlsearch"][0][2], wall=wall, cpu=cpu,
        ratios_wall=[a / b for a, b in zip(wall["tlsearch"], wall["bare"], strict=True)],
        ratios_cpu=[a / b for a, b in zip(cpu["tlsearch"], cpu["bare"], strict=True)],
        loader_share=loader_s / median([t[0] for t in times["tlsearch"]]), loader_s=loader_s,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 images and 3 repeats (about 30 s)")
    parser.add_argument("--images", type=int, default=None, help="training images (default 3000, quick 1000)")
    parser.add_argument("--repeats", type=int, default=None, help="epochs per side (default 5, quick 3)")
    parser.add_argument("--profile", action="store_true", help="also cProfile one tlsearch epoch and one bare epoch")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where both sides train")
    parser.add_argument("--dataset", default="fashion-mnist-split", help="target images (default fashion-mnist-split)")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results.md")
    args = parser.parse_args(argv)
    n_images = args.images or (1000 if args.quick else 3000)
    repeats = args.repeats or (3 if args.quick else 5)
    device = torch.device(args.device)
    m = measure(n_images, repeats, device, args.dataset, args.profile)
    where = f"on {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "1 thread"

    print(f"benchmark 1: tlsearch loop vs bare PyTorch loop — {MODEL}, {SPEC.in_chans}x{SPEC.size}x{SPEC.size}, "
          f"{m.seen} images/epoch, batch {BATCH}, {where}, {repeats} alternating epochs per side")
    print(f"machine: {machine()}; {versions()}")
    print(f"note: {SHARED_NOTE}\n")
    rows = [[name, f"{median(m.wall[name]):.0f}", f"{min(m.wall[name]):.0f}-{max(m.wall[name]):.0f}",
             f"{median(m.cpu[name]):.0f}"] for name in m.wall]
    print(table(["loop", "images/s (median, wall)", "range", "images/s (CPU time)"], rows))
    print()
    print(table(
        ["ratio tlsearch / bare", "median", "per repeat"],
        [["wall clock, paired (the result)", f"{m.ratio:.3f}", " ".join(f"{v:.3f}" for v in m.ratios_wall)],
         ["process CPU time, paired", f"{m.ratio_cpu:.3f}", " ".join(f"{v:.3f}" for v in m.ratios_cpu)],
         ["wall clock, ratio of the two medians", f"{m.of_medians:.3f}", "-"]],
    ))
    print("(paired = each tlsearch epoch against the bare epoch run next to it, so a load spike from the other "
          "processes cancels; the ratio of the two sides' medians does not pair them and is noisier)")
    print(f"\nDataLoader + normaliser alone: {m.loader_s * 1e3:.0f} ms/epoch = {m.loader_share:.1%} of a tlsearch "
          "epoch")
    met = m.ratio >= GOAL
    verdict = f"goal >= {GOAL}: {'MET' if met else 'MISSED'}"
    if not met:
        verdict += (f" (DataLoader+normaliser take {m.loader_share:.1%} of the epoch; rerun with --profile for where "
                    "the rest goes)")
    print(verdict)

    if not args.no_record:
        numbers = (f"tlsearch {median(m.wall['tlsearch']):.0f} img/s, bare {median(m.wall['bare']):.0f} img/s, "
                   f"paired ratio {m.ratio:.3f} (CPU-time {m.ratio_cpu:.3f}, of medians {m.of_medians:.3f}); "
                   f"{m.seen} img/epoch x {repeats}; loader+normalise {m.loader_share:.1%} of epoch"
                   + (f"; {where}" if device.type == "cuda" else ""))
        append_result("loop_vs_bare" + (" --device cuda" if device.type == "cuda" else ""), numbers, verdict,
                      args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
