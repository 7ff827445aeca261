"""Cluster files, checked offline: the shipped launcher configs and KubeRay manifests pass, and a copy broken in
one place is reported at that place (``FILE:PATH: MESSAGE``), through ``tlsearch cluster validate``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from tlsearch.cli import cli
from tlsearch.cluster import validate

CLUSTERS = Path(__file__).resolve().parents[1] / "clusters"
SHIPPED = sorted(CLUSTERS.glob("*.yaml"))


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_shipped_cluster_files_exist() -> None:
    names = {p.name for p in SHIPPED}
    assert {"aws-gpu.yaml", "gcp-gpu.yaml", "kuberay-raycluster.yaml", "kuberay-rayjob.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_cluster_files_validate(path: Path) -> None:
    assert validate.validate_file(path) == []
    result = invoke("cluster", "validate", str(path))
    assert result.exit_code == 0, result.output
    assert "1 file(s) valid" in result.output


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = _parts(dotted)
    target: Any = doc
    for part in parents:
        target = target[part]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value


def _parts(dotted: str) -> list[Any]:
    """``a.b[0].c`` as keys and indexes; ``nvidia.com/gpu`` stays one key."""
    parts: list[Any] = []
    for piece in dotted.replace(validate.GPU_RESOURCE, "\0").split("."):
        name, _, rest = piece.partition("[")
        if name:
            parts.append(name.replace("\0", validate.GPU_RESOURCE))
        if rest:
            parts.append(int(rest.rstrip("]")))
    return parts


DELETE = object()
WORKER = "spec.workerGroupSpecs[0]"
JOB_WORKER = "spec.rayClusterSpec.workerGroupSpecs[0]"
GPU_LIMIT = ".template.spec.containers[0].resources.limits"

BREAKAGES = [
    ("aws-gpu.yaml", "max_workers", "eight", "max_workers", "is not of type 'integer'"),
    ("aws-gpu.yaml", "head_node_type", "boss", "head_node_type", "got 'boss'; valid: head, gpu_worker"),
    ("aws-gpu.yaml", "storage_path", "s3://b/x", "$", "Additional properties are not allowed"),
    ("aws-gpu.yaml", "available_node_types.gpu_worker.min_workers", 9,
     "available_node_types.gpu_worker.min_workers", "min_workers 9 is above max_workers 8"),
    ("aws-gpu.yaml", "provider", DELETE, "$", "'provider' is a required property"),
    ("gcp-gpu.yaml", "available_node_types.gpu_worker.resources.GPU", "one",
     "available_node_types.gpu_worker.resources.GPU", "is not of type 'integer'"),
    ("gcp-gpu.yaml", "available_node_types.head.node_config", DELETE,
     "available_node_types.head", "'node_config' is a required property"),
    ("kuberay-raycluster.yaml", "apiVersion", "ray.io/v9", "apiVersion", "valid: ray.io/v1"),
    ("kuberay-raycluster.yaml", "spec.headGroupSpec", DELETE, "spec.headGroupSpec", "missing"),
    ("kuberay-raycluster.yaml", f"{WORKER}.replicas", "2", f"{WORKER}.replicas", "expected a whole number"),
    ("kuberay-raycluster.yaml", f"{WORKER}.maxReplicas", -1, f"{WORKER}.maxReplicas", "must be >= 0"),
    ("kuberay-raycluster.yaml", f"{WORKER}{GPU_LIMIT}.nvidia.com/gpu", 0,
     f"{WORKER}{GPU_LIMIT}.nvidia.com/gpu", "whole number of GPUs >= 1"),
    ("kuberay-raycluster.yaml", "spec.headGroupSpec.rayStartParams.num-cpus", 0,
     "spec.headGroupSpec.rayStartParams.num-cpus", "KubeRay wants text"),
    ("kuberay-raycluster.yaml", "spec.workerGroupSpecs", [], "spec.workerGroupSpecs", "at least one worker group"),
    ("kuberay-rayjob.yaml", "spec.entrypoint", DELETE, "spec.entrypoint", "missing; expected text"),
    ("kuberay-rayjob.yaml", "spec.shutdownAfterJobFinishes", "yes", "spec.shutdownAfterJobFinishes",
     "expected true or false"),
    ("kuberay-rayjob.yaml", f"{JOB_WORKER}.minReplicas", 9, f"{JOB_WORKER}.minReplicas",
     "minReplicas 9 is above maxReplicas 8"),
    ("kuberay-rayjob.yaml", "spec.runtimeEnvYAML", "pip: [unclosed", "spec.runtimeEnvYAML", "not valid YAML"),
    ("kuberay-rayjob.yaml", "kind", "RayService", "kind", "valid: RayCluster, RayJob"),
]


def _break(source: str, dotted: str, value: Any, tmp_path: Path) -> Path:
    doc = yaml.safe_load((CLUSTERS / source).read_text())
    _set(doc, dotted, value)
    broken = tmp_path / f"broken-{source}"
    broken.write_text(yaml.safe_dump(doc, sort_keys=False))
    return broken


@pytest.mark.parametrize(("source", "dotted", "value", "path", "message"), BREAKAGES,
                         ids=[f"{b[0]}:{b[1]}" for b in BREAKAGES])
def test_broken_copy_is_caught_at_its_path(
    source: str, dotted: str, value: Any, path: str, message: str, tmp_path: Path
) -> None:
    broken = _break(source, dotted, value, tmp_path)
    result = invoke("cluster", "validate", str(CLUSTERS / source), str(broken))
    assert result.exit_code == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith(f"{broken}:{path}: ")]
    assert lines, result.stderr
    assert any(message in ln for ln in lines), lines
    assert str(CLUSTERS / source) + ":" not in result.stderr  # the good original stays clean
    assert "problem(s) in 1 of 2 file(s)" in result.stderr


def test_unreadable_and_foreign_files_are_problems(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("cluster_name: [unclosed\n")
    foreign = tmp_path / "foreign.yaml"
    foreign.write_text("hello: world\n")
    result = invoke("cluster", "validate", str(bad_yaml), str(foreign), str(tmp_path / "missing.yaml"))
    assert result.exit_code == 2
    assert f"{bad_yaml}:$: not valid YAML" in result.stderr
    assert f"{foreign}:$: got a mapping; expected a Ray cluster-launcher config" in result.stderr
    assert f"{tmp_path / 'missing.yaml'}:$: cannot read it" in result.stderr


def test_multi_document_manifest_paths_carry_the_document_index(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((CLUSTERS / "kuberay-raycluster.yaml").read_text()))
    second = copy.deepcopy(docs[0])
    second["spec"]["workerGroupSpecs"][0]["groupName"] = 7
    both = tmp_path / "both.yaml"
    both.write_text(yaml.safe_dump_all([docs[0], second]))
    problems = [str(p) for p in validate.validate_file(both)]
    assert problems == [f"{both}:[1].spec.workerGroupSpecs[0].groupName: got a number 7; expected text"]
