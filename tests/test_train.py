from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tlsearch.train import Cost, _restore, _save


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
