from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from torch import nn

from tlsearch import models
from tlsearch.errors import DataError
from tlsearch.inputs import ShardBatches, loaders
from tlsearch.models import InputSpec
from tlsearch.search.backend import process_group_backend
from tlsearch.spec import TrialSpec
from tlsearch.train import Cost, Precision, evaluate, is_convolutional, normalizer, place
from tlsearch.worker import _restore, _save

SPEC = InputSpec(3, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _model_and_optimizer() -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return model, optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)


def test_checkpoint_round_trip_gives_next_epoch_cost_and_every_epochs_metrics(tmp_path: Path) -> None:
    model, optimizer, scheduler = _model_and_optimizer()
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    cost = Cost(wall_s=2.0, device_s=2.0, samples_seen=64, train_flops=1e9)
    history = [{"epoch": e, "val_acc": 0.25 * e, "node_id": "abc", "trainable_params": 8} for e in (1, 2, 3)]
    _save(str(tmp_path), model, optimizer, scheduler, cost, history)

    restored, optimizer2, scheduler2 = _model_and_optimizer()
    got_cost, next_epoch, got_history = _restore(str(tmp_path), restored, optimizer2, scheduler2)

    assert next_epoch == 4 and got_cost == cost and got_history == history
    assert torch.equal(restored.weight, model.weight)
    assert scheduler2.last_epoch == 1 and optimizer2.state_dict()["state"].keys() == {0, 1}


# ------------------------------------------------------------------------ checkpoint: the fp16 gradient scaler


def test_checkpoint_round_trip_restores_the_gradient_scaler(tmp_path: Path) -> None:
    model, optimizer, scheduler = _model_and_optimizer()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # enabled on CPU: the state is what matters here
    scaler.scale(model(torch.ones(2, 3)).sum()).backward()
    scaler.step(optimizer)
    scaler.update(new_scale=48.0)  # as after a run of overflows: not the initial scale
    _save(str(tmp_path), model, optimizer, scheduler, Cost(), [{"epoch": 1}], scaler)

    restored, optimizer2, scheduler2 = _model_and_optimizer()
    fresh = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _restore(str(tmp_path), restored, optimizer2, scheduler2, fresh)
    assert fresh.get_scale() == 48.0 and fresh.state_dict() == scaler.state_dict()


# ------------------------------------------------------------------------------- collectives and sharding


class _Collective(Exception):
    pass


def test_evaluation_all_reduces_once_on_the_training_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """NCCL takes CUDA tensors only: the sums go to the collective from the model's device (``meta`` stands in
    for a GPU here; a meta tensor also has no value, so no batch may read one back to the host)."""
    model = nn.Linear(4, 3).to("meta")
    batch = (torch.zeros(5, 4, device="meta"), torch.zeros(5, dtype=torch.long, device="meta"))
    given: list[torch.Tensor] = []

    def all_reduce(tensor: torch.Tensor, *args: object, **kwargs: object) -> None:
        given.append(tensor)
        raise _Collective  # a meta tensor cannot be read back: stop at the collective

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a: 1)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    with pytest.raises(_Collective):
        evaluate(model, [batch, batch, batch], lambda x: x, nn.CrossEntropyLoss())
    assert [(t.device.type, t.dtype, tuple(t.shape)) for t in given] == [("meta", torch.float64, (3,))]


def _spec(batch_size: int = 64, eval_batch_size: int = 64, seed: int = 0) -> TrialSpec:
    return TrialSpec("test_resnet", 3, SPEC, 2, batch_size, eval_batch_size, 0.0, seed, 1, 1.0)


def _items(loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> list[int]:
    return [int(i) for x, _ in loader for i in x]


def test_two_workers_train_on_disjoint_shards_and_count_every_validation_image_once() -> None:
    """100 images, 2 workers, batch 64: each worker trains on its 50 (not 0 batches); 179 count as 179."""
    train = (torch.arange(100), torch.zeros(100, dtype=torch.long))
    val = (torch.arange(179), torch.zeros(179, dtype=torch.long))
    shards, counted = [], []
    for rank in (0, 1):
        train_loader, val_loader, _ = loaders(train, val, _spec(), rank=rank, world=2)
        assert len(train_loader) == 1
        shards.append(_items(train_loader))
        counted += _items(val_loader)
    assert [len(s) for s in shards] == [50, 50] and sorted(shards[0] + shards[1]) == list(range(100))
    assert sorted(counted) == list(range(179))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_worker_takes_the_same_number_of_steps(world: int) -> None:
    """Uneven shards (255 = 128 + 127) must not give one worker a step more: its collective would wait forever."""
    for size in range(world, 300, 7):
        samplers = [ShardBatches(size, 64, rank=r, world=world, shuffle=True) for r in range(world)]
        batches = [list(s) for s in samplers]
        assert len({len(b) for b in batches}) == 1
        assert all(len(b) == len(s) >= 1 for b, s in zip(batches, samplers, strict=True))
        used = [i for b in batches for batch in b for i in batch]
        assert len(used) == len(set(used)) == samplers[0].items_per_pass
        if size // world >= 64:
            assert all(len(batch) == 64 for b in batches for batch in b)  # full batches only
    with pytest.raises(DataError, match="cannot be shared by 4 workers"):
        ShardBatches(3, 64, world=4, shuffle=True)


def test_one_worker_keeps_drop_last_when_the_subset_holds_more_than_a_batch() -> None:
    for size, expected in ((40, [40]), (64, [64]), (150, [64, 64])):
        assert [len(b) for b in ShardBatches(size, 64, shuffle=True)] == expected


def test_the_training_order_follows_the_trials_seed_and_epoch() -> None:
    train = (torch.arange(100), torch.zeros(100, dtype=torch.long))

    def order(seed: int, epoch: int, rank: int = 0) -> list[int]:
        loader = loaders(train, train, _spec(batch_size=16, seed=seed), rank=rank, world=2)[0]
        loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        return _items(loader)

    assert order(1, 1) == order(1, 1)
    assert order(1, 1) != order(2, 1) and order(1, 1) != order(1, 2)
    assert set(order(2, 1)).isdisjoint(order(2, 1, rank=1))  # both ranks draw the same permutation


# ------------------------------------------------------------------------------ GPU defaults, CPU unchanged


def test_precision_auto_is_bf16_where_the_gpu_has_it_fp16_otherwise_and_fp32_on_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert Precision.resolve("auto", cpu) == Precision("fp32", "cpu")
    assert Precision.resolve("bf16", cpu).name == "fp32" and not Precision.resolve("fp16", cpu).scaler().is_enabled()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation)
    assert Precision.resolve("auto", cuda) == Precision("bf16", "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert Precision.resolve("auto", cuda) == Precision("fp16", "cuda")
    assert Precision.resolve("fp32", cuda) == Precision("fp32", "cuda") and not Precision("fp32", "cuda").enabled


def test_cpu_runs_keep_contiguous_inputs_and_no_autotuning() -> None:
    model = models.create("test_resnet", num_classes=3)
    before = torch.backends.cudnn.benchmark
    assert is_convolutional(model) and not is_convolutional(models.create("test_vit", num_classes=3))
    assert place(model, torch.device("cpu")) is False and torch.backends.cudnn.benchmark == before
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous()
    images = torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8)
    assert normalizer(SPEC, torch.device("cpu"))(images).is_contiguous()
    on_gpu_layout = normalizer(SPEC, torch.device("cpu"), channels_last=True)(images)
    assert on_gpu_layout.is_contiguous(memory_format=torch.channels_last)


def test_workers_sharing_a_gpu_use_gloo() -> None:
    assert process_group_backend(2, True, 1.0) == "nccl" and process_group_backend(1, True, 0.5) == "nccl"
    assert process_group_backend(2, True, 0.5) == "gloo" and process_group_backend(2, False, 1.0) == "gloo"


# --------------------------------------------------------------------------- BatchNorm in frozen groups


def _running_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}


def test_batchnorm1d_stops_updating_in_frozen_groups_of_levit() -> None:
    """timm's LeViT (like RepViT, EfficientViT-MSRA, SHViT) normalises with BatchNorm1d."""
    model = models.create("levit_128s", num_classes=3)
    keys = set(model.state_dict())
    plan = models.apply_freeze(model, models.num_groups(model) - 1)
    left = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert left and all(n.startswith("head") for n in left)  # only the trainable head's
    stats = _running_stats(model)
    model.train()(torch.randn(2, 3, 224, 224))
    moved = {k for k, v in _running_stats(model).items() if not torch.equal(v, stats[k])}
    assert moved and all(k.startswith("head") for k in moved)
    assert set(model.state_dict()) <= keys and plan.depth == models.num_groups(model) - 1


class _Affineless(nn.Module):
    """Three groups (stem, body, classifier); the stem's BatchNorm has no affine parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
        self.fc = nn.Linear(4, 2)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(self.stem(x)).mean((2, 3)))


def test_an_affine_free_batchnorm_in_a_frozen_group_stops_updating() -> None:
    model = _Affineless()
    keys = set(model.state_dict())
    models.apply_freeze(model, 1)  # the stem
    stats = _running_stats(model)
    model.train()(torch.randn(4, 3, 8, 8))
    after = _running_stats(model)
    assert torch.equal(after["stem.1.running_mean"], stats["stem.1.running_mean"])
    assert not torch.equal(after["body.1.running_mean"], stats["body.1.running_mean"])  # the trainable group's
    assert set(model.state_dict()) <= keys  # no new keys: an exported model still loads as --weights
