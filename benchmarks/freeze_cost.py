"""Benchmark 2: training-step cost against freeze depth, and what tlsearch's feature cache buys a linear probe.

For resnet10t (1 channel, 32x32, 5 classes) at every freeze depth 0..G-1 (``models.apply_freeze``), one epoch of
``train.train_epoch`` over ``inputs.loaders``' DataLoader, batch 64, one thread: measured seconds per training
image and ``models.train_flops_per_sample``, each as a ratio to depth 0 (full fine-tuning). Depths are interleaved
(order reversed every repeat) and the median over repeats is used, so load from other processes hits all alike.

Depth G-1 is a linear probe. Measured twice: with the feature cache off (``feature_cache: false``: the frozen
backbone's forward runs every step of every epoch), and the way ``worker.train_loop_per_worker`` runs it with the
cache on (``tlsearch.features``): after ``features.eligible`` and ``features.matches``, one no-grad pass
``features.compute`` over the training subset, then ``train_epoch`` on ``model.get_classifier()`` alone over
``inputs.loaders((features, labels), ...)`` with ``make_optimizer``'s AdamW. The one-off pass is amortised over
``--epochs`` (6, the quickstart's max_epochs); the head-only epoch is also reported on its own. Both exclude
evaluation, as every depth row does. Goal (issue): a linear-probe epoch with a feature cache >= 10x cheaper
than full fine-tuning.

Run: ``.venv/bin/python benchmarks/freeze_cost.py [--quick] [--repeats N] [--epochs E] [--profile]``
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from dataclasses import replace

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

from tlsearch import features, inputs, models, train
from tlsearch.inputs import Payload
from tlsearch.spec import TrialSpec
from tlsearch.train import Hyper

BATCH = 64
GOAL = 10.0
HP = Hyper(init="scratch", freeze_depth=0, head_lr=1e-3, backbone_lr=1e-3, data_fraction=1.0)


def trial_spec() -> TrialSpec:
    return TrialSpec(
        model=MODEL, num_classes=5, input_spec=SPEC, max_epochs=1, batch_size=BATCH, eval_batch_size=256,
        weight_decay=0.01, seed=SEED, threads=1, devices_per_worker=1.0,
    )


def timed(fn: Callable[[], int]) -> tuple[float, float]:
    """(wall s, process CPU s) per image for one call of ``fn`` (which returns the images it processed)."""
    wall, cpu = time.perf_counter(), time.process_time()
    n = fn()
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


def depth_epoch(initial: nn.Module, depth: int, payload: Payload, spec: TrialSpec) -> tuple[Callable[[], int], float]:
    """(one tlsearch training epoch at this freeze depth, measured train FLOPs per sample)."""
    model = copy.deepcopy(initial)
    hp = replace(HP, freeze_depth=depth)
    plan = models.apply_freeze(model, depth)
    loss_fn = nn.CrossEntropyLoss()
    flops, _ = models.train_flops_per_sample(model, spec.input_spec, loss_fn)
    loader = trial_train_loader(payload, hp, spec)
    optimizer, scheduler = train.make_optimizer(model, plan, hp, spec.weight_decay, len(loader))
    normalize = train.normalizer(spec.input_spec, torch.device("cpu"))

    def run() -> int:
        return train.train_epoch(model, loader, normalize, optimizer, scheduler, loss_fn)[1]

    return run, flops


def cached_probe(
    initial: nn.Module, depth: int, payload: Payload, spec: TrialSpec
) -> tuple[Callable[[], int], Callable[[], int], float, float]:
    """A linear probe as ``worker.train_loop_per_worker`` runs it with the feature cache on.

    Returns (the one-off ``features.compute`` pass over the training subset, one epoch of ``train_epoch`` on
    ``model.get_classifier()`` over ``inputs.loaders((features, labels), ...)``, the classifier's train FLOPs per
    sample (``train._classifier_flops``), the frozen part's forward FLOPs per image
    (``features.forward_flops_per_image``)). Raises SystemExit when the model is not eligible for the cache.
    """
    model = copy.deepcopy(initial)
    hp = replace(HP, freeze_depth=depth)
    plan = models.apply_freeze(model, depth)
    loss_fn = nn.CrossEntropyLoss()
    normalize = train.normalizer(spec.input_spec, torch.device("cpu"))
    train_idx, val_idx = inputs.subset(payload, hp)
    probe_images = normalize(payload.images[val_idx[:4]])
    if not features.eligible(model) or not features.matches(model, probe_images):
        raise SystemExit(f"freeze depth {depth} of {MODEL} is not eligible for the feature cache "
                         "(features.eligible / features.matches); a search would train it the usual way")
    images, train_y = payload.images[train_idx], payload.labels[train_idx]
    store: dict[str, torch.Tensor] = {"train": features.compute(model, images, normalize)}

    def feature_pass() -> int:
        store["train"] = features.compute(model, images, normalize)
        return len(images)

    net: nn.Module = model.get_classifier()  # type: ignore[operator]
    head_flops = inputs._classifier_flops(net, store["train"][:2], loss_fn)
    forward_flops = features.forward_flops_per_image(model, probe_images[:2])
    # Evaluation is not timed (as for every depth row); the validation loader is built over a stand-in.
    loader = inputs.loaders((store["train"], train_y), (store["train"][:1], train_y[:1]), spec)[0]
    optimizer, scheduler = train.make_optimizer(model, plan, hp, spec.weight_decay, len(loader))

    def head_epoch() -> int:
        return train.train_epoch(net, loader, inputs._identity, optimizer, scheduler, loss_fn)[1]

    return feature_pass, head_epoch, head_flops, forward_flops


def profile_probe(run: Callable[[], int]) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    print("\n--- torch.profiler, one linear-probe epoch without a cache (top 10 by self CPU time) ---")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=40))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="320 images and 2 repeats (about 30 s)")
    parser.add_argument("--images", type=int, default=None, help="training images (default 960, quick 320)")
    parser.add_argument("--repeats", type=int, default=None, help="epochs per depth (default 4, quick 2)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs the one-off feature pass is amortised over")
    parser.add_argument("--profile", action="store_true", help="torch.profiler on one linear-probe epoch")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results.md")
    args = parser.parse_args(argv)
    n_images = args.images or (320 if args.quick else 960)
    repeats = args.repeats or (2 if args.quick else 4)

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    images, labels, subset, val = target_data(n_images)
    payload = Payload(images, labels, subset, val, None, SEED)
    spec = trial_spec()
    initial, _ = train.build_model(spec, HP, None)
    groups = models.num_groups(initial)
    probe_depth = groups - 1

    runs: dict[str, Callable[[], int]] = {}
    flops: dict[str, float] = {}
    for depth in range(groups):
        runs[f"depth {depth}"], flops[f"depth {depth}"] = depth_epoch(initial, depth, payload, spec)
    feature_pass, head_epoch, head_flops, pass_flops = cached_probe(initial, probe_depth, payload, spec)
    runs["feature pass (once)"], runs["head on cached features"] = feature_pass, head_epoch
    for run in runs.values():  # warm-up
        run()
    per_image: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            per_image[name].append(timed(runs[name]))

    wall = {k: median([t[0] for t in v]) for k, v in per_image.items()}
    cpu = {k: median([t[1] for t in v]) for k, v in per_image.items()}
    full = "depth 0"

    print(f"benchmark 2: step cost against freeze depth — {MODEL}, {SPEC.in_chans}x{SPEC.size}x{SPEC.size}, "
          f"{len(subset)} training images, batch {BATCH}, 1 thread, {repeats} interleaved epochs per depth")
    print(f"machine: {machine()}; {versions()}")
    print(f"note: {SHARED_NOTE}\n")
    rows = []
    for depth in range(groups):
        k = f"depth {depth}"
        label = k + (" (linear probe, cache off)" if depth == probe_depth
                     else " (full fine-tune)" if depth == 0 else "")
        rows.append([label, f"{wall[k] * 1e3:.3f}", f"{wall[k] / wall[full]:.3f}", f"{cpu[k] / cpu[full]:.3f}",
                     f"{flops[k] / 1e6:.1f}", f"{flops[k] / flops[full]:.3f}"])
    print(table(["freeze depth", "ms/image (wall)", "time ratio", "CPU-time ratio", "MFLOP/image", "FLOP ratio"],
                rows))

    e = args.epochs
    probe = f"depth {probe_depth}"
    feat, head = "feature pass (once)", "head on cached features"
    amortised = wall[head] + wall[feat] / e
    amortised_cpu = cpu[head] + cpu[feat] / e
    amortised_flops = head_flops + pass_flops / e
    options = [
        ("full fine-tuning (depth 0)", wall[full], cpu[full], flops[full]),
        (f"linear probe, feature cache off (depth {probe_depth})", wall[probe], cpu[probe], flops[probe]),
        (f"linear probe, feature cache on, pass amortised over {e} epochs", amortised, amortised_cpu,
         amortised_flops),
        ("  of which: head alone on cached features", wall[head], cpu[head], head_flops),
        ("  of which: one-off feature pass / epochs", wall[feat] / e, cpu[feat] / e, pass_flops / e),
    ]
    print(f"\nlinear probe per epoch, against full fine-tuning (goal: with the cache >= {GOAL:g}x cheaper)")
    print("cache on = tlsearch.features.compute once, then train.train_epoch on model.get_classifier() over "
          "inputs.loaders((features, labels)), as worker.train_loop_per_worker runs a linear probe")
    print(table(
        ["variant", "ms/image (wall)", "x cheaper (wall)", "x cheaper (CPU time)", "x cheaper (FLOPs)"],
        [[n, f"{w * 1e3:.4f}", f"{wall[full] / w:.1f}", f"{cpu[full] / c:.1f}", f"{flops[full] / f:.1f}"]
         for n, w, c, f in options],
    ))
    no_cache_x, cache_x, head_x = wall[full] / wall[probe], wall[full] / amortised, wall[full] / wall[head]
    print(f"\nlinear probe, cache off: {no_cache_x:.1f}x cheaper than full fine-tuning: the frozen backbone's "
          f"forward ({flops[probe] / flops[full]:.0%} of a full step's FLOPs) runs every step of every epoch")
    print(f"linear probe, cache on, one-off pass amortised over {e} epochs: {cache_x:.1f}x cheaper -> goal "
          f">= {GOAL:g}x {'MET' if cache_x >= GOAL else 'MISSED'}")
    print(f"head-only epoch (the pass already done, e.g. a cache hit from an earlier trial): {head_x:.0f}x cheaper")
    budget = wall[full] / GOAL - wall[head]
    if budget > 0:
        need = wall[feat] / budget
        print(f"a trial's own pass reaches {GOAL:g}x once it is amortised over >= {need:.1f} epochs; ASHA trials "
              "stopped at the grace period gain less unless they hit the cache (same freeze depth and data "
              "fraction as an earlier trial: FeatureCache shares the pass across trials)")
    else:
        print(f"even the head-only epoch alone is not {GOAL:g}x cheaper")
    if args.profile:
        profile_probe(runs[probe])

    if not args.no_record:
        depth_ratios = " ".join(f"{wall[f'depth {d}'] / wall[full]:.2f}" for d in range(groups))
        flop_ratios = " ".join(f"{flops[f'depth {d}'] / flops[full]:.2f}" for d in range(groups))
        numbers = (f"time ratio by depth 0..{groups - 1}: {depth_ratios}; FLOP ratio: {flop_ratios}; "
                   f"full {wall[full] * 1e3:.2f} ms/img; probe cache off {no_cache_x:.1f}x cheaper, "
                   f"cache on (tlsearch.features, pass over {e} epochs) {cache_x:.1f}x, head-only epoch "
                   f"{head_x:.0f}x; {len(subset)} img x {repeats}")
        verdict = (f"goal >= {GOAL:g}x with cache: {'MET' if cache_x >= GOAL else 'MISSED'} ({cache_x:.1f}x over "
                   f"{e} epochs); cache off {no_cache_x:.1f}x")
        append_result("freeze_cost", numbers, verdict, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
