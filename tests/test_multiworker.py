"""Several workers per trial: the arithmetic of shared GPUs, two gloo processes running the loop, and (slow) a real
search whose one trial trains on 2 DDP workers of a local 2-CPU Ray."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from tlsearch.config import SearchConfig, build_config
from tlsearch.errors import ConfigError
from tlsearch.inputs import loaders
from tlsearch.models import InputSpec
from tlsearch.search.session import plan_resources
from tlsearch.spec import TrialSpec
from tlsearch.train import Stepper, evaluation, fit
from tlsearch.worker import DEBUG_ENV

# (the search and its tables are imported in the slow test: the gloo workers below import this module)

# ---------------------------------------------------------------------------------- resources (fast)


def test_fractional_gpus_let_trials_share_one_gpu() -> None:
    two_per_gpu = plan_resources(SearchConfig(use_gpu=True, gpus_per_worker=0.5, trials=4), {"CPU": 8, "GPU": 1})
    assert two_per_gpu.concurrency == 2 and two_per_gpu.worker_resources()["GPU"] == 0.5
    assert two_per_gpu.devices_per_worker == 0.5  # a wall second costs half a GPU-second
    third = plan_resources(SearchConfig(use_gpu=True, gpus_per_worker=0.33, trials=4), {"CPU": 8, "GPU": 1})
    assert third.concurrency == 3
    ddp_on_one = plan_resources(SearchConfig(use_gpu=True, gpus_per_worker=0.5, num_workers=2, trials=2),
                                {"CPU": 8, "GPU": 1})
    assert ddp_on_one.concurrency == 1 and ddp_on_one.num_workers == 2
    assert plan_resources(SearchConfig(use_gpu=True, trials=4), {"CPU": 2, "GPU": 4}).concurrency == 2  # CPUs bind


def test_gpu_shares_are_validated() -> None:
    assert SearchConfig(use_gpu=True, gpus_per_worker=0.25).gpus_per_worker == 0.25
    assert SearchConfig(use_gpu=True, gpus_per_worker=2).gpus_per_worker == 2
    with pytest.raises(ConfigError, match=r"gpus_per_worker: got 1.5; valid: a share of one GPU in \(0, 1\]"):
        SearchConfig(use_gpu=True, gpus_per_worker=1.5)
    with pytest.raises(ConfigError, match="use_gpu with 2 worker"):
        plan_resources(SearchConfig(use_gpu=True, num_workers=2, trials=1), {"CPU": 8, "GPU": 1})
    assert SearchConfig().precision == "auto"  # CPUs run it as fp32, no --gpu needed


def test_a_two_worker_trial_needs_two_cpus() -> None:
    config = SearchConfig(num_workers=2, trials=1)
    shape = plan_resources(config, {"CPU": 2})
    assert shape.concurrency == 1 and sum(shape.worker_resources()["CPU"] for _ in range(2)) < 2
    with pytest.raises(ConfigError, match="a trial needs 2 CPU"):
        plan_resources(config, {"CPU": 1})


# ------------------------------------------------------------------------- two gloo processes, no Ray (slow)

SPEC = InputSpec(3, 8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _data() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(279, 4, generator=g), torch.randint(0, 3, (279,), generator=g)
    return (x[:100], y[:100]), (x[100:], y[100:])  # 100 training, 179 validation


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def _gloo_worker(rank: int, world: int, port: int, folder: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        spec = TrialSpec("mlp", 3, SPEC, 3, 64, 64, 0.0, 7, 1, 1.0)
        train, val = _data()
        train_loader, val_loader, _ = loaders(train, val, spec, rank=rank, world=world)
        model = _model()
        net = nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
        stepper = Stepper(net, lambda x: x, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0))
        epochs = [r.__dict__ for r in fit(stepper, train_loader, val_loader, range(1, 4),
                                          before_epoch=train_loader.sampler.set_epoch)]  # type: ignore[union-attr]
        shard = train_loader.sampler.last  # type: ignore[union-attr]
        torch.save({"epochs": epochs, "shard": shard, "state": model.state_dict()}, f"{folder}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow  # two processes importing torch and timm: seconds, not milliseconds
def test_two_gloo_workers_agree_count_each_image_once_and_train(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(_gloo_worker, args=(2, port, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["epochs"] == [{**e, "seconds": ranks[0]["epochs"][i]["seconds"]}
                                  for i, e in enumerate(ranks[1]["epochs"])]  # the same metrics on both ranks
    epochs = ranks[0]["epochs"]
    assert [e["samples"] for e in epochs] == [100, 100, 100] and [e["val_images"] for e in epochs] == [179] * 3
    assert all(e["train_loss"] > 0 for e in epochs) and epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert sorted(ranks[0]["shard"] + ranks[1]["shard"]) == list(range(100))
    # The reported validation is the whole split, once, with rank 0's model (its checkpoint): recompute it alone.
    model = _model()
    model.load_state_dict(ranks[0]["state"])
    _, val = _data()
    alone = evaluation(model, [val], lambda x: x, nn.CrossEntropyLoss())
    assert alone.images == 179
    assert (epochs[-1]["val_loss"], epochs[-1]["val_acc"]) == pytest.approx((alone.loss, alone.acc), rel=1e-6)


# --------------------------------------------------------------------- a real 2-worker trial on Ray (slow)


@pytest.fixture(scope="module")
def worker_records(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    """The workers' debug records (``TLSEARCH_DEBUG_DIR``), set before Ray starts so its workers inherit it."""
    folder = tmp_path_factory.mktemp("workers")
    os.environ[DEBUG_ENV] = str(folder)
    request.getfixturevalue("ray_2_cpus")
    yield folder
    del os.environ[DEBUG_ENV]


@pytest.mark.slow
def test_a_trial_on_two_ddp_workers(tmp_path: Path, worker_records: Path) -> None:
    from tlsearch import results
    from tlsearch.search import run_search

    config = build_config(
        None, dataset="digits-split", model="test_resnet", init="scratch", freeze_depth="0", head_lr="0.01",
        backbone_lr="0.01", data_fraction="0.2", image_size=16, trials=1, max_epochs=4, name="ddp",
        results_dir=str(tmp_path / "results"), batch_size=64, val_size=139, num_workers=2, seed=5,
    )  # 115 training images: shards of 58 and 57, one batch each (the 100 images, batch 64); 139 validation
    run_search(config, echo=lambda _: None, verbose=0)
    tables = results.open(tmp_path / "results" / "ddp")
    trial = tables.trials.to_table().to_pylist()[0]
    epochs = tables.epochs.to_table().sort_by("epoch").to_pylist()
    experiment = tables.experiments.to_table().to_pylist()[0]
    assert experiment["concurrency"] == 1 and experiment["val_size"] == 139  # odd: a padding sampler counts 140
    assert trial["status"] == "completed" and [e["epoch"] for e in epochs] == [1, 2, 3, 4], trial["error"]

    records = [json.loads(p.read_text()) for p in sorted(worker_records.glob(f"*{trial['trial_id']}*-rank*.json"))]
    assert [(r["rank"], r["world"], r["backend"], r["device"]) for r in records] == [
        (0, 2, "gloo", "cpu"), (1, 2, "gloo", "cpu")]
    size = trial["train_size"]
    for first, second in zip(records[0]["epochs"], records[1]["epochs"], strict=True):
        shards = first["train"], second["train"]
        assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == list(range(size))
        assert sorted(first["val"] + second["val"]) == list(range(139))
        assert first["val_images"] == second["val_images"] == 139
        agreed = ("val_acc", "val_loss", "train_loss", "samples_seen")
        assert {k: first["metrics"][k] for k in agreed} == {k: second["metrics"][k] for k in agreed}
    table_view = [(e["val_acc"], e["train_loss"]) for e in epochs]
    assert table_view == [(r["metrics"]["val_acc"], r["metrics"]["train_loss"]) for r in records[0]["epochs"]]
    assert epochs[-1]["samples_seen"] == 4 * size
    assert 0 < epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    print(f"\n2 DDP workers: train_size {size}, shards {[len(s) for s in shards]}, val counted "
          f"{first['val_images']} of 139 (shares {len(first['val'])}+{len(second['val'])}); train_loss "
          f"{[round(e['train_loss'], 3) for e in epochs]}, val_loss {[round(e['val_loss'], 3) for e in epochs]}, "
          f"val_acc {[round(e['val_acc'], 3) for e in epochs]}")
