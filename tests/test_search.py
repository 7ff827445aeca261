from __future__ import annotations

import pytest

from tlsearch.config import build_config
from tlsearch.errors import ConfigError
from tlsearch.search import plan_resources
from tlsearch.search.prepare import prepare
from tlsearch.search.tables import epoch_records


def test_concurrency_counts_every_cpu_a_trial_holds() -> None:
    one = plan_resources(build_config(None, trials=10), {"CPU": 2.0})
    assert (one.concurrency, one.threads, one.use_gpu) == (2, 1, False)
    two = plan_resources(build_config(None, trials=10, num_workers=2), {"CPU": 2.0})
    assert two.concurrency == 1
    capped = plan_resources(build_config(None, trials=10, max_concurrent=1), {"CPU": 8.0})
    assert capped.concurrency == 1
    few_trials = plan_resources(build_config(None, trials=3), {"CPU": 8.0})
    assert few_trials.concurrency == 3


def test_gpus_bound_concurrency_when_present() -> None:
    res = plan_resources(build_config(None, trials=10), {"CPU": 16.0, "GPU": 2.0})
    assert res.use_gpu and res.concurrency == 2
    cpu_only = plan_resources(build_config(None, trials=10, use_gpu=False), {"CPU": 16.0, "GPU": 2.0})
    assert not cpu_only.use_gpu and cpu_only.concurrency == 10


def test_a_trial_that_cannot_fit_is_refused() -> None:
    with pytest.raises(ConfigError, match="a trial needs 3 CPU"):
        plan_resources(build_config(None, num_workers=3), {"CPU": 2.0})
    with pytest.raises(ConfigError, match=r"needs 1 GPU\(s\); the cluster has 0"):
        plan_resources(build_config(None, use_gpu=True), {"CPU": 2.0})


def test_prepare_resolves_space_and_decodes_once(tmp_path) -> None:
    plan = prepare(build_config(None, model="test_resnet", init="scratch", image_size=16,
                                results_dir=str(tmp_path / "r"), name="p"))
    assert plan.num_groups == 6
    assert plan.config.space.freeze_depth is not None and plan.config.space.freeze_depth.bounds() == (0, 5)
    assert plan.images.shape[1:] == (3, 16, 16)
    parts = [set(plan.pool.tolist()), set(plan.val.tolist()), set(plan.test.tolist())]
    assert sum(map(len, parts)) == len(plan.labels) == len(set.union(*parts))  # three disjoint splits, all images
    assert len(plan.test) == pytest.approx(0.2 * len(plan.labels), abs=5)  # digits: a stratified --test-size share
    assert plan.classes == ("5", "6", "7", "8", "9")
    assert not (tmp_path / "r").exists()  # nothing is written before the search starts


def test_epoch_rows_keep_one_report_per_epoch_and_a_restored_repeat_only_when_it_is_all_there_is() -> None:
    from types import SimpleNamespace

    import pandas as pd

    frame = pd.DataFrame([
        {"epoch": 1, "val_acc": 0.5, "checkpoint_path": "ckpt-1"},
        {"epoch": 2, "val_acc": 0.6, "checkpoint_path": "ckpt-2"},
        {"epoch": 2, "val_acc": 0.6, "restored": True},  # a restored worker repeating a logged epoch
        {"epoch": 3, "val_acc": 0.7, "checkpoint_path": "ckpt-3"},
        {"epoch": 4, "val_acc": 0.8, "restored": True},  # the driver died before Tune logged epoch 4
    ])
    rows = epoch_records(SimpleNamespace(metrics_dataframe=frame))
    assert [(r["epoch"], r["checkpoint_path"], r["restored"]) for r in rows] == [
        (1, "ckpt-1", None), (2, "ckpt-2", None), (3, "ckpt-3", None), (4, None, True)]
    assert epoch_records(SimpleNamespace(metrics_dataframe=pd.DataFrame())) == []
