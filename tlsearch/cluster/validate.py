"""Cluster files, checked offline: Ray cluster-launcher YAML against the JSON schema Ray ships, KubeRay manifests.

Each problem is one :class:`Problem`, shown as ``file:path: message``. The launcher config is checked against the
schema inside the ``ray`` package (``ray/autoscaler/ray-schema.json``), plus the few things a schema cannot say
(node types that exist, worker counts that fit). KubeRay publishes no schema that ships with a Python package,
so its ``RayCluster``/``RayJob`` fields are checked by hand: what each needs and the type it must have.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from tlsearch.cluster.connection import one_line


@dataclass(frozen=True)
class Problem:
    """One thing wrong in one file, at a dotted path such as ``spec.workerGroupSpecs[0].replicas``."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.path or '$'}: {self.message}"


KUBERAY_API_VERSIONS = ("ray.io/v1",)
KUBERAY_KINDS = ("RayCluster", "RayJob")
GPU_RESOURCE = "nvidia.com/gpu"
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
_DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def validate_files(paths: Sequence[str | Path]) -> list[Problem]:
    """Every problem in every file, in order; an empty list means they all pass."""
    return [problem for path in paths for problem in validate_file(path)]


def validate_file(path: str | Path) -> list[Problem]:
    name = str(path)
    try:
        docs = [doc for doc in yaml.safe_load_all(Path(path).read_text()) if doc is not None]
    except OSError as exc:
        return [Problem(name, "", f"cannot read it ({exc.strerror or exc})")]
    except yaml.YAMLError as exc:
        return [Problem(name, "", f"not valid YAML: {one_line(str(exc))}")]
    if not docs:
        return [Problem(name, "", "empty file; expected a cluster-launcher config or a KubeRay manifest")]
    problems: list[Problem] = []
    for index, doc in enumerate(docs):
        prefix = f"[{index}]" if len(docs) > 1 else ""
        problems += [Problem(name, _join(prefix, p), m) for p, m in validate_document(doc)]
    return problems


def validate_document(doc: Any) -> list[tuple[str, str]]:
    """Problems of one YAML document as ``(path, message)`` pairs, by what kind of file it is."""
    if isinstance(doc, dict) and ("apiVersion" in doc or "kind" in doc):
        return validate_kuberay(doc)
    if isinstance(doc, dict) and ({"cluster_name", "provider", "available_node_types"} & set(doc)):
        return validate_launcher(doc)
    return [("", f"got {_type_name(doc)}; expected a Ray cluster-launcher config (cluster_name, provider, "
                 "...) or a KubeRay manifest (apiVersion, kind)")]


@lru_cache(maxsize=1)
def ray_schema() -> dict[str, Any]:
    """The cluster-launcher JSON schema that ships inside the installed ``ray`` package."""
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    return dict(json.loads(path.read_text()))


def validate_launcher(doc: dict[str, Any]) -> list[tuple[str, str]]:
    import jsonschema

    validator = jsonschema.Draft7Validator(ray_schema())
    found = [
        (_json_path(error.absolute_path), one_line(error.message))
        for error in sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    ]
    return found + _launcher_semantics(doc)


def _launcher_semantics(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """What the schema cannot say: the head type exists, worker counts are consistent."""
    types = doc.get("available_node_types")
    if not isinstance(types, dict):
        return []
    found: list[tuple[str, str]] = []
    head = doc.get("head_node_type")
    if types and head is None:
        found.append(("head_node_type", f"missing; give one of the available_node_types: {', '.join(types)}"))
    elif isinstance(head, str) and head not in types:
        found.append(("head_node_type", f"got {head!r}; valid: {', '.join(types) or 'none defined'}"))
    total_min = 0
    for name, node in types.items():
        if not isinstance(node, dict):
            continue
        low, high = node.get("min_workers", 0), node.get("max_workers")
        if isinstance(low, int) and isinstance(high, int) and low > high:
            found.append((f"available_node_types.{name}.min_workers",
                          f"min_workers {low} is above max_workers {high}; give min_workers <= max_workers"))
        if isinstance(low, int) and name != head:
            total_min += low
    cap = doc.get("max_workers")
    if isinstance(cap, int) and total_min > cap:
        found.append(("max_workers", f"got {cap}, below the {total_min} workers the node types' min_workers "
                                     "ask for; give max_workers >= the sum of min_workers"))
    return found


def validate_kuberay(doc: dict[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    api, kind = doc.get("apiVersion"), doc.get("kind")
    if api not in KUBERAY_API_VERSIONS:
        found.append(("apiVersion", f"got {api!r}; valid: {', '.join(KUBERAY_API_VERSIONS)}"))
    if kind not in KUBERAY_KINDS:
        return found + [("kind", f"got {kind!r}; valid: {', '.join(KUBERAY_KINDS)}")]
    metadata = _need(doc, "metadata", dict, "", found)
    if metadata is not None:
        name = _need(metadata, "name", str, "metadata", found)
        if name is not None and not _DNS_1123.match(name):
            found.append(("metadata.name", f"got {name!r}; use lower-case letters, digits and '-'"))
    spec = _need(doc, "spec", dict, "", found)
    if spec is None:
        return found
    if kind == "RayCluster":
        return found + _raycluster_spec(spec, "spec")
    return found + _rayjob_spec(spec)


def _rayjob_spec(spec: dict[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    entrypoint = _need(spec, "entrypoint", str, "spec", found)
    if entrypoint is not None and not entrypoint.strip():
        found.append(("spec.entrypoint", "empty; give the command the job runs, e.g. 'tlsearch run ...'"))
    cluster_spec = _want(spec, "rayClusterSpec", dict, "spec", found)
    selector = _want(spec, "clusterSelector", dict, "spec", found)
    if cluster_spec is None and selector is None and not _has_type_error(found, "spec.rayClusterSpec"):
        found.append(("spec.rayClusterSpec",
                      "missing; give rayClusterSpec (or clusterSelector for an existing cluster)"))
    if cluster_spec is not None:
        found += _raycluster_spec(cluster_spec, "spec.rayClusterSpec")
    shutdown = _want(spec, "shutdownAfterJobFinishes", bool, "spec", found)
    if shutdown and selector is not None:
        found.append(("spec.shutdownAfterJobFinishes", "true with clusterSelector; a job cannot shut down a "
                                                       "cluster it did not create (use rayClusterSpec)"))
    ttl = _want(spec, "ttlSecondsAfterFinished", int, "spec", found)
    if ttl is not None and ttl < 0:
        found.append(("spec.ttlSecondsAfterFinished", f"got {ttl}; must be >= 0"))
    for key in ("activeDeadlineSeconds", "backoffLimit"):
        value = _want(spec, key, int, "spec", found)
        if value is not None and value < 0:
            found.append((f"spec.{key}", f"got {value}; must be >= 0"))
    mode = spec.get("submissionMode")
    if mode is not None and mode not in SUBMISSION_MODES:
        found.append(("spec.submissionMode", f"got {mode!r}; valid: {', '.join(SUBMISSION_MODES)}"))
    runtime_env = _want(spec, "runtimeEnvYAML", str, "spec", found)
    if runtime_env is not None:
        found += _runtime_env_yaml(runtime_env)
    return found


def _runtime_env_yaml(text: str) -> list[tuple[str, str]]:
    try:
        env = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [("spec.runtimeEnvYAML", f"not valid YAML: {one_line(str(exc))}")]
    if env is not None and not isinstance(env, dict):
        return [("spec.runtimeEnvYAML", f"got {_type_name(env)}; expected a mapping (pip, env_vars, ...)")]
    return []


def _raycluster_spec(spec: dict[str, Any], at: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    _want(spec, "rayVersion", str, at, found)
    _want(spec, "enableInTreeAutoscaling", bool, at, found)
    head = _need(spec, "headGroupSpec", dict, at, found)
    if head is not None:
        found += _group_common(head, f"{at}.headGroupSpec")
    workers = _need(spec, "workerGroupSpecs", list, at, found)
    if workers is not None and not workers:
        found.append((f"{at}.workerGroupSpecs", "empty; give at least one worker group (the GPU workers)"))
    names: set[str] = set()
    for index, group in enumerate(workers or []):
        where = f"{at}.workerGroupSpecs[{index}]"
        if not isinstance(group, dict):
            found.append((where, f"got {_type_name(group)}; expected a mapping"))
            continue
        found += _worker_group(group, where, names)
    return found


def _worker_group(group: dict[str, Any], where: str, names: set[str]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    name = _need(group, "groupName", str, where, found)
    if name is not None:
        if name in names:
            found.append((f"{where}.groupName", f"{name!r} is used twice; group names must be unique"))
        names.add(name)
    counts = {key: _want(group, key, int, where, found) for key in ("replicas", "minReplicas", "maxReplicas")}
    for key, value in counts.items():
        if value is not None and value < 0:
            found.append((f"{where}.{key}", f"got {value}; must be >= 0"))
    low, high, replicas = counts["minReplicas"], counts["maxReplicas"], counts["replicas"]
    if low is not None and high is not None and low > high:
        found.append((f"{where}.minReplicas", f"minReplicas {low} is above maxReplicas {high}"))
    elif replicas is not None and low is not None and high is not None and not low <= replicas <= high:
        found.append((f"{where}.replicas", f"got {replicas}; must be within minReplicas..maxReplicas "
                                           f"{low}..{high}"))
    return found + _group_common(group, where)


def _group_common(group: dict[str, Any], where: str) -> list[tuple[str, str]]:
    """rayStartParams (string values) and a pod template with at least one container."""
    found: list[tuple[str, str]] = []
    params = _want(group, "rayStartParams", dict, where, found)
    for key, value in (params or {}).items():
        if not isinstance(value, str):
            found.append((f"{where}.rayStartParams.{key}",
                          f"got {_type_name(value)} {value!r}; KubeRay wants text: quote it, '{value}'"))
    template = _need(group, "template", dict, where, found)
    pod = _need(template, "spec", dict, f"{where}.template", found) if template is not None else None
    containers = _need(pod, "containers", list, f"{where}.template.spec", found) if pod is not None else None
    if containers is not None and not containers:
        found.append((f"{where}.template.spec.containers", "empty; give the Ray container"))
    for index, container in enumerate(containers or []):
        found += _container(container, f"{where}.template.spec.containers[{index}]")
    return found


def _container(container: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(container, dict):
        return [(where, f"got {_type_name(container)}; expected a mapping")]
    found: list[tuple[str, str]] = []
    _need(container, "name", str, where, found)
    _need(container, "image", str, where, found)
    resources = _want(container, "resources", dict, where, found)
    if resources is None:
        return found
    limits = _want(resources, "limits", dict, f"{where}.resources", found) or {}
    requests = _want(resources, "requests", dict, f"{where}.resources", found) or {}
    for part, values in (("limits", limits), ("requests", requests)):
        if GPU_RESOURCE in values:
            found += _gpu_count(values[GPU_RESOURCE], f"{where}.resources.{part}.{GPU_RESOURCE}")
    if GPU_RESOURCE in requests and GPU_RESOURCE not in limits:
        found.append((f"{where}.resources.limits.{GPU_RESOURCE}",
                      "missing while requests has it; Kubernetes schedules GPUs by limits"))
    elif GPU_RESOURCE in requests and str(requests[GPU_RESOURCE]) != str(limits[GPU_RESOURCE]):
        found.append((f"{where}.resources.requests.{GPU_RESOURCE}",
                      f"got {requests[GPU_RESOURCE]!r}, limits has {limits[GPU_RESOURCE]!r}; GPU requests "
                      "must equal limits"))
    return found


def _gpu_count(value: Any, where: str) -> list[tuple[str, str]]:
    text = str(value)
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        return [(where, f"got {value!r}; give a whole number of GPUs >= 1")]
    return []


def _need(obj: dict[str, Any], key: str, kind: type, at: str, found: list[tuple[str, str]]) -> Any:
    if key not in obj:
        found.append((_join(at, key), f"missing; expected {_kind_name(kind)}"))
        return None
    return _want(obj, key, kind, at, found)


def _want(obj: dict[str, Any], key: str, kind: type, at: str, found: list[tuple[str, str]]) -> Any:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        got = f"got {_type_name(value)} {_short(value)}"
        found.append((_join(at, key), f"{got}; expected {_kind_name(kind)}"))
        return None
    return value


def _has_type_error(found: list[tuple[str, str]], path: str) -> bool:
    return any(p == path for p, _ in found)


def _join(at: str, key: str) -> str:
    if not at:
        return key
    return f"{at}{key}" if key.startswith("[") else f"{at}.{key}"


def _json_path(parts: Sequence[Any]) -> str:
    out = ""
    for part in parts:
        out = f"{out}[{part}]" if isinstance(part, int) else _join(out, str(part))
    return out


def _kind_name(kind: type) -> str:
    return {str: "text", int: "a whole number", bool: "true or false", dict: "a mapping", list: "a list"}.get(
        kind, kind.__name__
    )


def _type_name(value: Any) -> str:
    return {str: "text", int: "a number", float: "a number", bool: "a boolean", dict: "a mapping",
            list: "a list", type(None): "nothing"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
