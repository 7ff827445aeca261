"""The GPU check behind ``scripts/gpu-check.sh``: real searches on this machine's NVIDIA GPU(s), each asserted on the
tables it wrote and on what its workers recorded (``TLSEARCH_DEBUG_DIR``, see ``worker.train_loop_per_worker``).

Checks, each a ``tlsearch run`` (or the benchmark) in its own process, on the bundled digits-split data:

1. search fp32 / bf16 / fp16 (bf16 only where the GPU computes it natively), each twice: feature cache on (two
   linear probes, one computing the frozen features, one reusing them) and off (a full fine-tune). Asserts: every
   trial completed; the workers trained on a CUDA device, in that precision (fp16 with a live gradient scaler),
   with cuDNN autotuning and channels-last; the cache column (miss + hit, or off); best validation accuracy above
   0.4 (chance is 0.2); finite losses.
2. two trials sharing one GPU (``--gpus-per-worker 0.5``, one GPU visible): both ran at once on the same GPU (same
   UUID, overlapping in time) and each was charged half a GPU: device_s = 0.5 x wall_s.
3. a 2-worker DDP trial: on two GPUs (NCCL) when there are two, else both workers on one GPU (gloo). Asserts:
   training shards disjoint and covering the subset, every validation image counted once, both ranks report the
   same metrics, the training loss goes down.
4. a search resumed after its driver was SIGKILLed mid-trial (a trial held at epoch 2): the re-run says it
   resumes, ends with every trial completed, one row per epoch, and a trial continued from its checkpoint.
5. tlsearch's training loop against a bare PyTorch loop on the GPU (``benchmarks/loop_vs_bare.py --device
   cuda``): the paired throughput ratio is at least the benchmark's goal.

Prints the device, one line per check with its figure, a summary; exits 1 if any check failed (or no GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL = "test_resnet"  # tiny: the checks are about correctness on the GPU, not its speed
DATASET = "digits-split"
CHANCE = 0.2  # five target classes
LEARNED = 0.4  # the validation accuracy a short search must beat (twice chance; about 0.6 is typical)


class CheckFailed(Exception):
    pass


def ensure(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@dataclass(frozen=True)
class Ran:
    """One search's tables and its workers' records, by Train run (``train-<trial_id>``), ranks in order."""

    experiment: dict[str, Any]
    trials: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    workers: dict[str, list[dict[str, Any]]]
    stdout: str

    def curve(self, trial_id: str, column: str) -> list[Any]:
        return [e[column] for e in sorted(self.epochs, key=lambda e: e["epoch"]) if e["trial_id"] == trial_id]


@dataclass
class Context:
    work: Path
    weights: Path
    device_type: str = "cuda"
    gpus: int = 1
    bf16: bool = False
    max_freeze: int = 0

    @property
    def auto(self) -> str:
        """What precision ``auto`` must resolve to here."""
        return "fp32" if self.device_type != "cuda" else "bf16" if self.bf16 else "fp16"

    def command(self, name: str, *options: str) -> list[str]:
        return [sys.executable, "-m", "tlsearch", "run", "--dataset", DATASET, "--model", MODEL,
                "--weights", str(self.weights), "--name", name, "--results-dir", str(self.work / "results"),
                "--seed", "0", *(("--gpu",) if self.device_type == "cuda" else ()), *options]

    def env(self, name: str, visible: str | None = None, **extra: str) -> dict[str, str]:
        from tlsearch.worker import DEBUG_ENV

        env = {**os.environ, "HF_HUB_OFFLINE": "1", DEBUG_ENV: str(self.work / "workers" / name), **extra}
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible
        return env

    def search(self, name: str, *options: str, visible: str | None = None, **extra: str) -> Ran:
        """Run ``tlsearch run`` to the end; its tables and worker records (CheckFailed if it fails)."""
        run = subprocess.Popen(self.command(name, *options), env=self.env(name, visible, **extra), cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            stdout, stderr = run.communicate(timeout=1800)
        except subprocess.TimeoutExpired:
            kill_session(run)
            raise CheckFailed("`tlsearch run` did not finish within 30 minutes; killed it and its Ray") from None
        log = self.work / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(stdout + stderr)
        tail = (stderr.strip().splitlines() or ["(no output)"])[-1]
        ensure(run.returncode == 0, f"`tlsearch run` exited {run.returncode}: {tail} (log: {log})")
        return self.read(name, stdout)

    def read(self, name: str, stdout: str = "") -> Ran:
        from tlsearch import results

        tables = results.open(self.work / "results" / name)
        workers: dict[str, list[dict[str, Any]]] = {}
        for path in sorted((self.work / "workers" / name).glob("*-rank*.json")):
            record = json.loads(path.read_text())
            workers.setdefault(record["run"], []).append(record)
        for ranks in workers.values():
            ranks.sort(key=lambda r: r["rank"])
        return Ran(tables.experiments.to_table().to_pylist()[0], tables.trials.to_table().to_pylist(),
                   tables.epochs.to_table().to_pylist(), workers, stdout)


def completed(ran: Ran, count: int) -> None:
    statuses = [t["status"] for t in ran.trials]
    errors = [t["error"] for t in ran.trials if t["error"]]
    ensure(statuses == ["completed"] * count, f"trial statuses {statuses}, expected {count} completed; {errors[:1]}")


def on_device(ctx: Context, ran: Ran, precision: str) -> list[dict[str, Any]]:
    """Every worker on the expected device type, in ``precision``, with the GPU defaults; the records."""
    records = [r for ranks in ran.workers.values() for r in ranks]
    ensure(len(records) >= len(ran.trials), f"{len(records)} worker records for {len(ran.trials)} trials")
    for r in records:
        ensure(r["device"].startswith(ctx.device_type), f"a worker trained on {r['device']}, not {ctx.device_type}")
        ensure(r["precision"] == precision, f"a worker trained in {r['precision']}, not {precision}")
        if ctx.device_type == "cuda":
            ensure(r["cudnn_benchmark"] and r["channels_last"], "cuDNN autotuning or channels-last was off")
        scales = [e["scale"] for e in r["epochs"]]
        if precision == "fp16":
            ensure(all(s is not None and s > 0 for s in scales), f"fp16 without a live gradient scaler: {scales}")
        else:
            ensure(all(s is None for s in scales), f"a gradient scaler ran in {precision}")
    return records


def finite(ran: Ran) -> None:
    for row in ran.epochs:
        for column in ("train_loss", "val_loss"):
            ensure(row[column] is not None and math.isfinite(row[column]) and row[column] > 0,
                   f"trial {row['trial_id']} epoch {row['epoch']}: {column} {row[column]}")


def check_precision(ctx: Context, precision: str, cache: bool) -> str:
    if not cache:
        ran = ctx.search(f"{precision}-full", "--precision", precision, "--trials", "1", "--max-epochs", "3",
                         "--grace-period", "3", "--init", "pretrained", "--freeze-depth", "0", "--head-lr", "0.01",
                         "--backbone-lr", "0.001", "--data-fraction", "0.5", "--no-feature-cache")
        completed(ran, 1)
        ensure([t["feature_cache"] for t in ran.trials] == ["off"], "the feature cache was used with it off")
    else:
        ran = ctx.search(f"{precision}-probe", "--precision", precision, "--trials", "2", "--max-concurrent", "1",
                         "--max-epochs", "3", "--grace-period", "3", "--init", "pretrained", "--freeze-depth",
                         str(ctx.max_freeze), "--head-lr", "0.05", "--data-fraction", "1.0", "--feature-cache")
        completed(ran, 2)
        got = sorted(t["feature_cache"] for t in ran.trials)
        ensure(got == ["hit", "miss"], f"feature cache {got}, expected one miss (computed) and one hit (reused)")
    on_device(ctx, ran, precision)
    finite(ran)
    best = max(t["best_val_acc"] for t in ran.trials)
    ensure(best > LEARNED, f"best val_acc {best:.3f}: not above {LEARNED} (chance is {CHANCE})")
    scale = ""
    if precision == "fp16":
        scale = f", scaler at {ran.workers[next(iter(ran.workers))][0]['epochs'][-1]['scale']:g}"
    gpu_s = sum(t["device_s"] for t in ran.trials)
    kind = "2 linear probes, cache miss + hit" if cache else "full fine-tune, cache off"
    return f"{kind}: best val_acc {best:.3f}, {gpu_s:.1f} device-s of training{scale}"


def overlap(records: list[dict[str, Any]]) -> float:
    """Seconds during which all these workers were alive (from their start to their last epoch)."""
    start = max(r["started_at"] for r in records)
    end = min(r["epochs"][-1]["ended_at"] for r in records)
    return end - start


def check_sharing(ctx: Context) -> str:
    ran = ctx.search("share-one-gpu", "--trials", "2", "--max-epochs", "3", "--grace-period", "3",
                     "--gpus-per-worker", "0.5", "--cpus-per-worker", "0.5", "--init", "pretrained",
                     "--freeze-depth", "0", "--head-lr", "0.01", "--backbone-lr", "0.001", "--data-fraction", "1.0",
                     visible="0")
    completed(ran, 2)
    ensure(ran.experiment["concurrency"] == 2, f"concurrency {ran.experiment['concurrency']}, expected 2")
    records = [ranks[0] for ranks in ran.workers.values()]
    on_device(ctx, ran, ctx.auto)
    uuids = {r["gpu_uuid"] for r in records}
    ensure(len(records) == 2 and len(uuids) == 1, f"the two trials ran on GPUs {sorted(map(str, uuids))}")
    both = overlap(records)
    ensure(both > 0, f"the trials did not run at the same time (overlap {both:.1f} s)")
    for t in ran.trials:
        ensure(abs(t["device_s"] - 0.5 * t["wall_s"]) < 1e-6 * max(1.0, t["wall_s"]),
               f"trial {t['trial_id']}: device_s {t['device_s']:.2f} is not 0.5 x wall_s {t['wall_s']:.2f}")
    return f"2 trials at once on one GPU for {both:.1f} s, each charged 0.5 GPU (device_s = 0.5 x wall_s)"


def check_ddp(ctx: Context) -> str:
    two_gpus = ctx.gpus >= 2
    share = [] if two_gpus else ["--gpus-per-worker", "0.5"]
    ran = ctx.search("ddp", "--num-workers", "2", *share, "--cpus-per-worker", "0.5", "--trials", "1",
                     "--max-epochs", "4", "--grace-period", "4", "--init", "scratch", "--freeze-depth", "0",
                     "--head-lr", "0.01", "--backbone-lr", "0.01", "--data-fraction", "0.2", "--batch-size", "64",
                     "--val-size", "139", visible=None if two_gpus else "0")
    completed(ran, 1)
    trial = ran.trials[0]
    ranks = ran.workers.get(f"train-{trial['trial_id']}", [])
    ensure([r["rank"] for r in ranks] == [0, 1] and all(r["world"] == 2 for r in ranks), "not 2 ranks of 2")
    on_device(ctx, ran, ctx.auto)
    backend = "nccl" if two_gpus else "gloo"
    ensure(all(r["backend"] == backend for r in ranks), f"backend {[r['backend'] for r in ranks]}, not {backend}")
    distinct = len({r["gpu_uuid"] for r in ranks})
    ensure(distinct == (2 if two_gpus else 1), f"the workers used {distinct} GPU(s)")
    size, val_size = trial["train_size"], ran.experiment["val_size"]
    for first, second in zip(ranks[0]["epochs"], ranks[1]["epochs"], strict=True):
        ensure(not set(first["train"]) & set(second["train"]), f"epoch {first['epoch']}: the shards overlap")
        ensure(sorted(first["train"] + second["train"]) == list(range(size)),
               f"epoch {first['epoch']}: the shards do not cover the {size} training images")
        ensure(sorted(first["val"] + second["val"]) == list(range(val_size)) and first["val_images"] == val_size,
               f"epoch {first['epoch']}: validation counted {first['val_images']} of {val_size} images")
        agreed = ("val_acc", "val_loss", "train_loss", "samples_seen")
        ensure(all(first["metrics"][k] == second["metrics"][k] for k in agreed), "the ranks report different metrics")
    losses = ran.curve(trial["trial_id"], "train_loss")
    ensure(losses[-1] < losses[0], f"training loss did not go down: {losses}")
    where = "2 GPUs, NCCL" if two_gpus else "1 shared GPU, gloo"
    return (f"{where}: shards {len(ranks[0]['epochs'][0]['train'])}+{len(ranks[1]['epochs'][0]['train'])} of {size}, "
            f"validation {val_size} counted once, train_loss {losses[0]:.3f} -> {losses[-1]:.3f}")


def kill_session(leader: subprocess.Popen[str]) -> None:
    """SIGKILL the driver and everything it started (its session: the local Ray and its workers)."""
    os.killpg(leader.pid, signal.SIGKILL)
    leader.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        members = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _session(p) == leader.pid]
        if not members:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)


def _session(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[4])
    except (OSError, IndexError, ValueError):
        return None


def check_resume(ctx: Context) -> str:
    from tlsearch.stopping import recorded_results
    from tlsearch.worker import FAULTS_ENV

    name = "resume"
    options = ("--trials", "2", "--max-epochs", "3", "--grace-period", "3", "--init", "pretrained",
               "--freeze-depth", "0", "--head-lr", "0.01", "--backbone-lr", "0.001", "--data-fraction", "0.5")
    faults = ctx.work / "faults.json"
    faults.write_text(json.dumps({"hang_at_epoch": 2}))  # after epoch 1's checkpoint: killed mid-trial
    tune_dir = str(ctx.work / "results" / name / "_ray" / "tune")
    log = (ctx.work / "logs" / f"{name}-killed.log").open("w")
    first = subprocess.Popen(ctx.command(name, *options), env=ctx.env(name, **{FAULTS_ENV: str(faults)}), cwd=ROOT,
                             stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and first.poll() is None and not list(recorded_results(tune_dir)):
            time.sleep(1)
        ensure(first.poll() is None, f"the search ended (exit {first.returncode}) before it could be killed")
        ensure(bool(list(recorded_results(tune_dir))), "no epoch was recorded within 15 minutes")
        time.sleep(3)  # the trial is now held at epoch 2, its epoch-1 checkpoint written
    finally:
        if first.poll() is None:
            kill_session(first)
        log.close()
    before = {(r["trial_id"], r["epoch"]) for r in recorded_results(tune_dir)}
    ensure(not (ctx.work / "results" / name / "trials.parquet").exists(), "the killed search wrote its tables")
    ran = ctx.search(name, *options)
    ensure("resuming 'resume'" in ran.stdout, "the second run did not resume the search")
    completed(ran, 2)
    keys = [(e["trial_id"], e["epoch"]) for e in ran.epochs]
    ensure(len(keys) == len(set(keys)) == 6, f"{len(keys)} epoch rows ({len(set(keys))} distinct), expected 6")
    continued = {r["trial_id"] for r in recorded_results(tune_dir) if r.get("restored")}
    ensure(bool(continued), "no trial was continued from its checkpoint")
    return (f"driver killed with {len(before)} epoch(s) recorded; resumed: 2 trials completed, 6 epoch rows, "
            f"{len(continued)} trial(s) continued from a checkpoint")


def check_throughput(ctx: Context) -> str:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import loop_vs_bare

    from tlsearch import data

    dataset = "fashion-mnist-split" if data.fashion_mnist_dir(None) else "digits"
    m = loop_vs_bare.measure(3000, 7, torch.device("cuda"), dataset)
    tl, bare = (loop_vs_bare.median(m.wall[k]) for k in ("tlsearch", "bare"))
    ensure(m.ratio >= loop_vs_bare.GOAL,
           f"tlsearch {tl:.0f} img/s vs bare {bare:.0f} img/s: ratio {m.ratio:.3f} < goal {loop_vs_bare.GOAL}")
    return (f"tlsearch {tl:.0f} img/s vs bare {bare:.0f} img/s ({m.seen} {dataset} images/epoch): paired ratio "
            f"{m.ratio:.3f} >= {loop_vs_bare.GOAL}")


def describe_gpus() -> tuple[int, bool]:
    import torch

    count = torch.cuda.device_count()
    for i in range(count):
        p = torch.cuda.get_device_properties(i)
        print(f"gpu-check: device {i}: {p.name}, compute capability {p.major}.{p.minor}, "
              f"{p.total_memory / 2**30:.0f} GiB")
    bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    print(f"gpu-check: {count} GPU(s); torch {torch.__version__} (CUDA {torch.version.cuda}); native bf16: "
          f"{'yes' if bf16 else 'no'}")
    return count, bf16


def run_checks(ctx: Context, only: list[str] | None = None) -> tuple[int, int]:
    checks: list[tuple[str, Callable[[], str] | None]] = []
    for precision in ("fp32", "bf16", "fp16"):
        for cache in (True, False):
            def check(p: str = precision, c: bool = cache) -> str:
                return check_precision(ctx, p, c)
            runnable = precision != "bf16" or ctx.bf16
            label = f"search {precision}, feature cache {'on' if cache else 'off'}"
            checks.append((label, check if runnable else None))
    checks += [("two trials share one GPU", lambda: check_sharing(ctx)),
               ("2-worker DDP trial", lambda: check_ddp(ctx)),
               ("resume after the driver was killed", lambda: check_resume(ctx)),
               ("loop vs bare PyTorch on the GPU", lambda: check_throughput(ctx))]
    passed = failed = 0
    for name, run in checks:
        if only and not any(o in name for o in only):
            continue
        if run is None:
            print(f"SKIP  {name}: this GPU has no native bf16", flush=True)
            continue
        started = time.perf_counter()
        try:
            figure = run()
        except Exception as exc:  # noqa: BLE001 - every failure is reported as that check's line
            failed += 1
            print(f"FAIL  {name} ({time.perf_counter() - started:.0f} s): {type(exc).__name__}: {exc}", flush=True)
        else:
            passed += 1
            print(f"PASS  {name} ({time.perf_counter() - started:.0f} s): {figure}", flush=True)
    return passed, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", help="where the searches write (default: a new temporary folder)")
    parser.add_argument("--only", action="append", help="run only the checks whose name contains this (repeatable)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        print("gpu-check: no NVIDIA GPU visible to PyTorch (torch.cuda.is_available() is False); nothing was run. "
              "Run it on a machine with an NVIDIA GPU and its driver.", file=sys.stderr)
        return 1
    count, bf16 = describe_gpus()
    started = time.perf_counter()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="tlsearch-gpu-check-")).resolve()
    print(f"gpu-check: working in {work}", flush=True)

    from tlsearch import models, pretrain

    weights = work / "source.safetensors"
    pretrain(DATASET, MODEL, weights, epochs=3, image_size=16, echo=lambda _: None)  # on the CPU, seconds
    ctx = Context(work, weights, "cuda", count, bf16, models.num_groups(models.create(MODEL, 2)) - 1)
    passed, failed = run_checks(ctx, args.only)
    print(f"gpu-check: {passed} passed, {failed} failed in {time.perf_counter() - started:.0f} s "
          f"({'OK' if failed == 0 and passed else 'FAILED'}); logs and tables in {work}")
    return 0 if failed == 0 and passed else 1


if __name__ == "__main__":
    sys.exit(main())
