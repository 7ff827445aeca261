"""Benchmark 1: tlsearch's per-worker training step against a bare PyTorch loop.

Both sides train the same resnet10t (1 channel, 32x32, 5 classes) from the same initial weights on the same
~3,000 Fashion-MNIST target images, batch 64, one thread:

* tlsearch: ``train.train_epoch`` over the DataLoader ``train.loaders`` builds (TensorDataset of uint8 images,
  shuffled), with ``train.normalizer`` applied per batch, ``make_optimizer``'s AdamW + cosine schedule, and
  ``loss.item()`` per step as the worker does;
* bare: images normalised to float once up front, sliced into batches, ``model(x)``, loss, backward, AdamW step.

Epochs of the two alternate (ABBA order) and the median over repeats is reported, so load from other processes
hits both sides alike. Goal (issue): tlsearch throughput >= 0.9 x bare.

Run: ``.venv/bin/python benchmarks/loop_vs_bare.py [--quick] [--repeats N] [--profile]``
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
    trial_train_loader,
    versions,
)
from torch import nn

from tlsearch import train
from tlsearch.train import Hyper, Payload, TrialSpec

BATCH = 64
GOAL = 0.9
HP = Hyper(init="scratch", freeze_depth=0, head_lr=1e-3, backbone_lr=1e-3, data_fraction=1.0)
Timing = tuple[float, float, int]  # (wall s, process CPU s, images)


def trial_spec() -> TrialSpec:
    return TrialSpec(
        model=MODEL, num_classes=5, input_spec=SPEC, max_epochs=1, batch_size=BATCH, eval_batch_size=256,
        weight_decay=0.01, seed=SEED, threads=1, devices_per_worker=1.0,
    )


def timed(fn: Callable[[], int]) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    seen = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, seen


def tlsearch_epoch(initial: nn.Module, payload: Payload, spec: TrialSpec) -> Callable[[], int]:
    """A closure running one epoch exactly as ``train_loop_per_worker`` does (minus Ray and evaluation)."""
    model = copy.deepcopy(initial)
    plan = train.models.apply_freeze(model, HP.freeze_depth)
    train_loader = trial_train_loader(payload, HP, spec)
    optimizer, scheduler = train.make_optimizer(model, plan, HP, spec.weight_decay, len(train_loader))
    normalize = train.normalizer(spec.input_spec, torch.device("cpu"))
    loss_fn = nn.CrossEntropyLoss()

    def run() -> int:
        return train.train_epoch(model, train_loader, normalize, optimizer, scheduler, loss_fn)[1]

    return run


def bare_epoch(initial: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], int]:
    """A closure running one epoch of the plainest loop over pre-normalised float tensors."""
    model = copy.deepcopy(initial)
    optimizer = torch.optim.AdamW(model.parameters(), lr=HP.head_lr, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss()
    n = (len(y) // BATCH) * BATCH  # drop_last, as train.loaders does

    def run() -> int:
        model.train()
        for i in range(0, n, BATCH):
            loss = loss_fn(model(x[i : i + BATCH]), y[i : i + BATCH])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return n

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 images and 3 repeats (about 30 s)")
    parser.add_argument("--images", type=int, default=None, help="training images (default 3000, quick 1000)")
    parser.add_argument("--repeats", type=int, default=None, help="epochs per side (default 5, quick 3)")
    parser.add_argument("--profile", action="store_true", help="also cProfile one tlsearch epoch and one bare epoch")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results.md")
    args = parser.parse_args(argv)
    n_images = args.images or (1000 if args.quick else 3000)
    repeats = args.repeats or (3 if args.quick else 5)

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    images, labels, subset, val = target_data(n_images)
    payload = Payload(images, labels, subset, val, None, SEED)
    spec = trial_spec()
    initial, _ = train.build_model(spec, HP, None)
    normalize = train.normalizer(spec.input_spec, torch.device("cpu"))
    idx = torch.from_numpy(subset)[torch.randperm(len(subset), generator=torch.Generator().manual_seed(SEED))]
    x_bare, y_bare = normalize(images[idx]).contiguous(), labels[idx].contiguous()

    # Fresh model + optimizer per side, reused over repeats (as epochs of a trial); one warm-up epoch each.
    sides = {"tlsearch": tlsearch_epoch(initial, payload, spec), "bare": bare_epoch(initial, x_bare, y_bare)}
    for run in sides.values():
        run()
    times: dict[str, list[Timing]] = {name: [] for name in sides}
    order = list(sides)
    for r in range(repeats):
        for name in order if r % 2 == 0 else order[::-1]:
            times[name].append(timed(sides[name]))

    # How much of the tlsearch epoch is the DataLoader + normaliser alone (no model), for the diagnosis.
    train_loader = trial_train_loader(payload, HP, spec)

    def loader_only() -> int:
        return sum(len(normalize(xb)) for xb, _ in train_loader)

    loader_s = median([timed(loader_only)[0] for _ in range(3)])

    wall = {k: [t[2] / t[0] for t in v] for k, v in times.items()}
    cpu = {k: [t[2] / t[1] for t in v] for k, v in times.items()}
    ratios_wall = [a / b for a, b in zip(wall["tlsearch"], wall["bare"], strict=True)]
    ratios_cpu = [a / b for a, b in zip(cpu["tlsearch"], cpu["bare"], strict=True)]
    ratio = median(ratios_wall)
    ratio_cpu = median(ratios_cpu)
    of_medians = median(wall["tlsearch"]) / median(wall["bare"])
    tl_epoch_s = median([t[0] for t in times["tlsearch"]])
    seen = times["tlsearch"][0][2]

    print(f"benchmark 1: tlsearch loop vs bare PyTorch loop — {MODEL}, {SPEC.in_chans}x{SPEC.size}x{SPEC.size}, "
          f"{seen} images/epoch, batch {BATCH}, 1 thread, {repeats} alternating epochs per side")
    print(f"machine: {machine()}; {versions()}")
    print(f"note: {SHARED_NOTE}\n")
    rows = [
        [name, f"{median(wall[name]):.0f}", f"{min(wall[name]):.0f}-{max(wall[name]):.0f}", f"{median(cpu[name]):.0f}"]
        for name in sides
    ]
    print(table(["loop", "images/s (median, wall)", "range", "images/s (CPU time)"], rows))
    print()
    print(table(
        ["ratio tlsearch / bare", "median", "per repeat"],
        [["wall clock, paired (the result)", f"{ratio:.3f}", " ".join(f"{v:.3f}" for v in ratios_wall)],
         ["process CPU time, paired", f"{ratio_cpu:.3f}", " ".join(f"{v:.3f}" for v in ratios_cpu)],
         ["wall clock, ratio of the two medians", f"{of_medians:.3f}", "-"]],
    ))
    print("(paired = each tlsearch epoch against the bare epoch run next to it, so a load spike from the other "
          "processes cancels; the ratio of the two sides' medians does not pair them and is noisier)")
    share = loader_s / tl_epoch_s
    print(f"\nDataLoader + normaliser alone: {loader_s * 1e3:.0f} ms/epoch = {share:.1%} of a tlsearch epoch")
    met = ratio >= GOAL
    verdict = f"goal >= {GOAL}: {'MET' if met else 'MISSED'}"
    if not met:
        verdict += (f" (DataLoader+normaliser take {share:.1%} of the epoch; rerun with --profile for where the "
                    "rest goes)")
    print(verdict)

    if args.profile:
        for name, run in sides.items():
            prof = cProfile.Profile()
            prof.runcall(run)
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
            print(f"\n--- cProfile, one {name} epoch (top 12 by own time) ---")
            print("\n".join(out.getvalue().splitlines()[:40]))

    if not args.no_record:
        numbers = (f"tlsearch {median(wall['tlsearch']):.0f} img/s, bare {median(wall['bare']):.0f} img/s, "
                   f"paired ratio {ratio:.3f} (CPU-time {ratio_cpu:.3f}, of medians {of_medians:.3f}); "
                   f"{seen} img/epoch x {repeats}; "
                   f"loader+normalise {share:.1%} of epoch")
        append_result("loop_vs_bare", numbers, verdict, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
