"""Per-model resources (issue 14): config, the plan of each model's trial shape, and what a trial of a model holds."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tlsearch.config import ModelResources, SearchConfig, build_config
from tlsearch.errors import ConfigError
from tlsearch.search.session import DRIVER_CPU, Resources, plan_resources
from tlsearch.search.trial import for_trial
from tlsearch.spec import InputSpec, TrialSpec

TWO = "test_resnet,test_vit"


def test_a_config_file_mapping_and_the_flag_give_the_same_resources(tmp_path: Path) -> None:
    path = tmp_path / "search.yaml"
    path.write_text("model: [test_resnet, test_vit]\nuse_gpu: true\n"
                    "model_resources:\n  test_vit: {cpus_per_worker: 2, gpus-per-worker: 0.5}\n")
    from_file = build_config(path)
    from_flag = build_config(None, model=TWO, use_gpu=True, model_resources="test_vit=2:0.5")
    assert from_file.model_resources == from_flag.model_resources == (("test_vit", ModelResources(2.0, 0.5)),)
    assert from_file.resources_for("test_resnet") == ModelResources()  # the defaults
    assert build_config(None, model=TWO, model_resources="test_vit=3").resources_for("test_vit") == ModelResources(3.0)
    toml = tmp_path / "search.toml"
    toml.write_text('model = ["test_resnet", "test_vit"]\n[model_resources.test_vit]\ncpus_per_worker = 4\n')
    assert build_config(toml).resources_for("test_vit").cpus_per_worker == 4.0


def test_the_mapping_survives_the_stored_config() -> None:
    config = build_config(None, model=TWO, use_gpu=True, model_resources="test_vit=2:0.5,test_resnet=:0.25")
    stored = config.to_dict()
    assert stored["model_resources"] == {"test_vit": {"cpus_per_worker": 2.0, "gpus_per_worker": 0.5},
                                         "test_resnet": {"gpus_per_worker": 0.25}}
    assert SearchConfig.from_dict(stored) == config
    assert build_config(None).to_dict()["model_resources"] is None  # searches stored before it still resume


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("resnet10t=2", "model_resources: got an entry for 'resnet10t', which is not a searched model; "
                        "valid: test_resnet, test_vit"),
        ({"test_vit": {"memory": 4}}, "model_resources.test_vit: unknown key(s) memory; "
                                      "valid: cpus_per_worker, gpus_per_worker"),
        ("test_vit=0", "model_resources.test_vit.cpus_per_worker: must be > 0, got 0"),
        ({"test_vit": {"cpus_per_worker": -1}}, "model_resources.test_vit.cpus_per_worker: must be > 0, got -1"),
        ("test_vit=:0", "model_resources.test_vit.gpus_per_worker: must be > 0, got 0"),
        ("test_vit=:1.5", "model_resources.test_vit.gpus_per_worker: got 1.5; valid: a share of one GPU"),
        ({"test_vit": {"cpus_per_worker": "two"}}, "model_resources.test_vit.cpus_per_worker: expected a number, "
                                                    "got 'two'"),
        ("test_vit", "model_resources: got 'test_vit'; give MODEL=CPUS:GPUS per worker"),
        ("test_vit=1,test_vit=2", "once per model"),
        ({"test_vit": 2}, "model_resources.test_vit: got 2; give {model: {cpus_per_worker: N"),
    ],
)
def test_bad_model_resources_are_one_clear_error(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(None, model=TWO, use_gpu=True, model_resources=value)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_gpus_for_a_model_need_gpus() -> None:
    with pytest.raises(ConfigError, match="model_resources.test_vit.gpus_per_worker: got 0.5 without --gpu"):
        build_config(None, model=TWO, model_resources="test_vit=1:0.5")


def test_each_model_has_its_shape_and_concurrency_comes_from_the_largest() -> None:
    config = build_config(None, model=TWO, trials=10, model_resources="test_vit=2")
    plan = plan_resources(config, {"CPU": 4.0})
    assert plan.concurrency == 2  # two test_vit trials fill 4 CPUs, so at most two trials of any model
    vit, resnet = plan.for_model("test_vit"), plan.for_model("test_resnet")
    assert (vit.cpus_per_worker, vit.threads, vit.worker_resources()) == (2.0, 2, {"CPU": 2.0 - DRIVER_CPU})
    assert (resnet.cpus_per_worker, resnet.threads, resnet.worker_resources()) == (1.0, 1, {"CPU": 1.0 - DRIVER_CPU})
    assert plan.describe() == "1 worker(s) x 1 CPU; test_vit: 2 CPU"
    gpus = build_config(None, model=TWO, trials=10, use_gpu=True, model_resources="test_resnet=:0.5")
    on_gpus = plan_resources(gpus, {"CPU": 16.0, "GPU": 2.0})
    assert on_gpus.concurrency == 2  # test_vit takes a whole GPU
    assert on_gpus.for_model("test_resnet").worker_resources()["GPU"] == 0.5
    halves = build_config(None, model=TWO, trials=10, use_gpu=True, model_resources="test_resnet=:0.5,test_vit=:0.5")
    assert plan_resources(halves, {"CPU": 16.0, "GPU": 2.0}).concurrency == 4


@pytest.mark.parametrize(("resources", "cluster"), [
    ("test_vit=3", {"CPU": 7.0}), ("test_resnet=2.5", {"CPU": 6.0}),
    ("test_vit=2:0.5", {"CPU": 5.0, "GPU": 2.0}), ("test_vit=1:2,test_resnet=4:0.5", {"CPU": 17.0, "GPU": 9.0}),
])
def test_any_mix_of_concurrent_trials_fits_the_cluster(resources: str, cluster: dict[str, float]) -> None:
    """What deadlocked once: trials holding their Tune function while waiting for workers that never fit."""
    use_gpu = "GPU" in cluster
    config = build_config(None, model=TWO, trials=50, num_workers=2, use_gpu=use_gpu, model_resources=resources)
    plan = plan_resources(config, cluster)
    assert plan.concurrency >= 1
    for mix in itertools.combinations_with_replacement(("test_resnet", "test_vit"), plan.concurrency):
        held = [plan.for_model(m).worker_resources() for m in mix]
        assert sum(DRIVER_CPU + 2 * w["CPU"] for w in held) <= cluster["CPU"] + 1e-9
        assert sum(2 * w.get("GPU", 0.0) for w in held) <= cluster.get("GPU", 0.0) + 1e-9


def test_a_model_whose_trial_cannot_fit_is_named() -> None:
    config = build_config(None, model=TWO, model_resources="test_vit=3")
    with pytest.raises(ConfigError, match=r"a trial of test_vit needs 3 CPU\(s\) \(1 worker\(s\) x 3\); the cluster"):
        plan_resources(config, {"CPU": 2.0})
    gpus = build_config(None, model=TWO, use_gpu=True, num_workers=2, model_resources="test_resnet=1:2")
    with pytest.raises(ConfigError, match=r"2 worker\(s\) x 2 GPU of test_resnet needs 4 GPU\(s\)"):
        plan_resources(gpus, {"CPU": 8.0, "GPU": 2.0})


def _spec(resources: Resources) -> TrialSpec:
    small, large = InputSpec(3, 16, (0.5,) * 3, (0.2,) * 3), InputSpec(3, 16, (0.4,) * 3, (0.3,) * 3)
    return TrialSpec(model="test_resnet", num_classes=5, input_spec=small, max_epochs=2, batch_size=8,
                     eval_batch_size=8, weight_decay=0.0, seed=0, threads=resources.threads,
                     devices_per_worker=resources.devices_per_worker,
                     input_specs=(("test_resnet", small), ("test_vit", large)))


def test_a_trial_holds_and_is_charged_its_models_resources() -> None:
    gpus = plan_resources(build_config(None, model=TWO, use_gpu=True, model_resources="test_vit=4:0.5"),
                          {"CPU": 8.0, "GPU": 2.0})
    spec, shape = for_trial("test_vit", _spec(gpus), gpus)
    assert (spec.model, spec.input_spec.mean, spec.threads, spec.devices_per_worker) == ("test_vit", (0.4,) * 3, 4, 0.5)
    assert shape.worker_resources() == {"CPU": 4.0 - DRIVER_CPU, "GPU": 0.5}
    spec, shape = for_trial("test_resnet", _spec(gpus), gpus)
    assert (spec.model, spec.threads, spec.devices_per_worker) == ("test_resnet", 1, 1.0)
    assert shape.worker_resources() == {"CPU": 1.0 - DRIVER_CPU, "GPU": 1.0}
    cpus = plan_resources(build_config(None, model=TWO, model_resources="test_vit=2"), {"CPU": 4.0})
    spec, shape = for_trial("test_vit", _spec(cpus), cpus)
    assert spec.devices_per_worker == 2.0 and spec.for_model("test_vit") is spec  # the worker keeps it
    assert for_trial("", _spec(cpus), cpus)[0].devices_per_worker == 1.0  # a Hyper built by hand: the first model
