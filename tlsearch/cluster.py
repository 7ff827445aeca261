"""Running a search on a real Ray cluster: offline validation of cluster files, and job submission.

* :func:`validate_files` checks Ray cluster-launcher YAML (``ray up``) against the JSON schema shipped inside
  the ``ray`` package, and KubeRay ``RayCluster``/``RayJob`` manifests against the fields and types they need.
  Each problem is one :class:`Problem`, shown as ``file:path: message``.
* :func:`submit` sends ``python -m tlsearch run ...`` as a Ray job through
  :class:`ray.job_submission.JobSubmissionClient`, with the working directory, the tlsearch package and its
  pip requirements as the runtime environment.
* Security: :func:`check_address` refuses plain ``http://`` to a non-loopback host without a token unless
  ``insecure``; :func:`load_token` reads ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``
  and the token only ever travels in the ``Authorization`` header (:func:`auth_headers`), never in output.
* Storage: :func:`check_storage` accepts ``s3://``, ``gs://`` or an absolute path; on a multi-node cluster a
  node-local path is refused unless it is marked shared (NFS). ``tlsearch run`` gives such a URI to Ray as its
  storage path and uploads its tables there with :func:`upload`.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import ipaddress
import json
import os
import re
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import yaml

from tlsearch.errors import TLSearchError


class ClusterError(TLSearchError):
    """A cluster address, token, storage path or job request is unusable."""


# --------------------------------------------------------------------------------------------- validation


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
        return [Problem(name, "", f"not valid YAML: {_one_line(str(exc))}")]
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
        (_json_path(error.absolute_path), _one_line(error.message))
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
        return [("spec.runtimeEnvYAML", f"not valid YAML: {_one_line(str(exc))}")]
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


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 300 else line[:297] + "..."


# ---------------------------------------------------------------------------------- address and token


TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"


def load_token(env: Mapping[str, str] | None = None, home: Path | None = None) -> str | None:
    """The Ray auth token from RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token."""
    env = os.environ if env is None else env
    if env.get(TOKEN_ENV, "").strip():
        return env[TOKEN_ENV].strip()
    path_text = env.get(TOKEN_PATH_ENV, "").strip()
    path = Path(path_text).expanduser() if path_text else (home or Path.home()) / ".ray" / "auth_token"
    if path_text and not path.is_file():
        raise ClusterError(f"{TOKEN_PATH_ENV} is {path_text!r}, which is not a file; give a token file")
    try:
        token = path.read_text().strip() if path.is_file() else ""
    except OSError as exc:
        raise ClusterError(f"token file {path}: cannot read it ({exc.strerror or exc})") from None
    return token or None


def auth_headers(token: str | None) -> dict[str, str]:
    """The HTTP headers that carry the token (Ray's token auth reads ``Authorization: Bearer ...``)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def redact(text: str, token: str | None) -> str:
    return text.replace(token, "<token>") if token else text


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address(address: str, token: str | None, insecure: bool = False) -> str:
    """The dashboard URL to use; refuses what would send jobs (code) to a remote host in the clear."""
    text = (address or "").strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClusterError(
            f"address: got {address!r}; give the Ray dashboard URL, http(s)://HOST:PORT (e.g. http://127.0.0.1:8265)"
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname) and not token and not insecure:
        raise ClusterError(
            f"address: refusing plain http to non-loopback host {parts.hostname!r} without a token; use "
            f"https, an SSH tunnel to 127.0.0.1, set {TOKEN_ENV}, or pass --insecure"
        )
    return text


def sends_token_in_clear(address: str, token: str | None) -> bool:
    parts = urlsplit(address)
    return bool(token) and parts.scheme == "http" and not is_loopback(parts.hostname or "")


@dataclass(frozen=True)
class Connection:
    """Where the dashboard is and how to authenticate; the token is only ever put into headers."""

    address: str
    token: str | None = dataclasses.field(default=None, repr=False)
    verify: bool | str = True

    @property
    def headers(self) -> dict[str, str]:
        return auth_headers(self.token)


def connect(address: str | None, insecure: bool = False, env: Mapping[str, str] | None = None) -> Connection:
    if not address:
        raise ClusterError("address: none given; pass --address http(s)://HOST:PORT "
                           "or set RAY_API_SERVER_ADDRESS")
    token = load_token(env)
    return Connection(check_address(address, token, insecure), token)


def client(conn: Connection) -> Any:
    """A JobSubmissionClient for ``conn`` (it checks the connection and version on creation)."""
    from ray.job_submission import JobSubmissionClient

    with _errors(conn, "connect to"):
        return JobSubmissionClient(conn.address, headers=conn.headers, verify=conn.verify)


@contextmanager
def _errors(conn: Connection, doing: str) -> Iterator[None]:
    """Turn the client's exceptions into one redacted line."""
    try:
        yield
    except TLSearchError:
        raise
    except Exception as exc:  # noqa: BLE001 - requests, Ray and HTTP errors all become one line
        message = redact(_one_line(str(exc) or type(exc).__name__), conn.token)
        raise ClusterError(f"cannot {doing} the Ray dashboard at {conn.address}: {message}") from None


# --------------------------------------------------------------------------------------------- storage

REMOTE_SCHEMES = ("s3", "gs", "gcs")


def storage_scheme(path: str) -> str:
    scheme = urlsplit(path).scheme.lower()
    return "" if len(scheme) <= 1 else scheme  # "C:\\..." is a Windows drive, not a scheme


def is_remote(path: str) -> bool:
    return storage_scheme(path) in REMOTE_SCHEMES


@dataclass(frozen=True)
class ClusterShape:
    """What the cluster looks like from its dashboard; ``nodes is None`` when it could not be asked."""

    nodes: int | None
    cpus: float = 0.0
    gpus: float = 0.0

    def multi_node(self, use_gpu: bool | None, loopback: bool) -> bool:
        """More than one node alive, or trials need a node that is not there yet (autoscaling workers).

        Unknown (no answer) counts as multi-node unless the address is loopback.
        """
        if self.nodes is None:
            return not loopback
        return self.nodes > 1 or self.cpus < 1 or bool(use_gpu and self.gpus < 1)


def cluster_shape(conn: Connection, timeout: float = 10.0) -> ClusterShape:
    """Alive nodes and their CPUs/GPUs from the dashboard's state API (``/api/v0/nodes``)."""
    import requests

    try:
        response = requests.get(
            f"{conn.address}/api/v0/nodes", params={"limit": "10000", "detail": "true"},
            headers=conn.headers, verify=conn.verify, timeout=timeout,
        )
        response.raise_for_status()
        body = response.json()
        rows = body["data"]["result"]["result"]
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return ClusterShape(None)
    alive = [row for row in rows if isinstance(row, dict) and row.get("state") == "ALIVE"]
    total = [row.get("resources_total") or {} for row in alive]
    return ClusterShape(len(alive), sum(float(r.get("CPU", 0)) for r in total),
                        sum(float(r.get("GPU", 0)) for r in total))


def check_storage(path: str | None, *, multi_node: bool, shared: bool, where: str) -> str:
    """The storage path a submitted search writes to, or a one-line refusal saying why and what works."""
    if not path:
        raise ClusterError("storage: none given; pass --storage-path s3://BUCKET/DIR, gs://BUCKET/DIR or an "
                           "absolute path on storage the cluster nodes mount")
    scheme = storage_scheme(path)
    if scheme in REMOTE_SCHEMES:
        _check_pyarrow_scheme(scheme, path)
        return path
    if scheme not in ("", "file"):
        raise ClusterError(f"storage path {path!r}: scheme {scheme!r} is not supported; valid: s3://, gs://, "
                           "or a local/NFS path")
    local = urlsplit(path).path if scheme == "file" else path
    if not local.startswith("/"):
        raise ClusterError(f"storage path {path!r} is relative; it would land in the job's temporary working "
                           "directory: give an absolute path, s3:// or gs://")
    if multi_node and not shared:
        raise ClusterError(
            f"storage path {path!r} is node-local and {where} has (or will add) more than one node: trials "
            "on other nodes could not write checkpoints there; give s3://, gs:// or an NFS path with "
            "--shared-storage"
        )
    return local


def _check_pyarrow_scheme(scheme: str, path: str) -> None:
    import pyarrow.fs

    needed = "S3FileSystem" if scheme == "s3" else "GcsFileSystem"
    if not hasattr(pyarrow.fs, needed):
        raise ClusterError(f"storage path {path!r}: this pyarrow was built without {needed}; "
                           "install a pyarrow wheel from PyPI")
    if not urlsplit(path).netloc:
        raise ClusterError(f"storage path {path!r} has no bucket; give {scheme}://BUCKET/DIR")


def remote_filesystem(uri: str) -> tuple[Any, str]:
    import pyarrow.fs

    if storage_scheme(uri) == "gcs":
        uri = "gs" + uri[3:]
    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as exc:
        raise ClusterError(f"storage path {uri!r}: pyarrow cannot open it ({_one_line(str(exc))})") from None


def upload(local: str, filesystem: Any, base: str) -> None:
    import pyarrow.fs

    try:
        filesystem.create_dir(base, recursive=True)
        pyarrow.fs.copy_files(local, base, source_filesystem=pyarrow.fs.LocalFileSystem(),
                              destination_filesystem=filesystem)
    except OSError as exc:
        raise ClusterError(f"cannot copy the results to {base}: {_one_line(str(exc))}") from None


# ---------------------------------------------------------------------------------------- GPU options

# ------------------------------------------------------------------------------------------ submission

EXCLUDES = [".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "results",
            "*.egg-info", "build", ".cache"]
PATH_OPTIONS = ("config_file", "weights", "data_dir", "dataset")


def entrypoint_args(params: Sequence[click.Parameter], values: Mapping[str, Any]) -> list[str]:
    """The ``tlsearch run`` flags that reproduce ``values`` (unset options are left out)."""
    args: list[str] = []
    for param in params:
        if not isinstance(param, click.Option) or param.name not in values:
            continue
        value = values[param.name]
        if value is None:
            continue
        if param.count:
            args += [param.opts[0]] * int(value)
        elif param.is_flag and param.secondary_opts:
            args.append(param.opts[0] if value else param.secondary_opts[0])
        elif param.is_flag:
            if value:
                args.append(param.opts[0])
        else:
            args += [_long_opt(param), _format(value)]
    return args


def _long_opt(param: click.Option) -> str:
    return next((opt for opt in param.opts if opt.startswith("--")), param.opts[0])


def _format(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def ship_paths(values: Mapping[str, Any], working_dir: Path, note: Callable[[str], None]) -> dict[str, Any]:
    """Local files inside the working directory become relative (they travel with the job).

    Others are left as they are, with a note that they must exist on the cluster nodes.
    """
    out = dict(values)
    for key in PATH_OPTIONS:
        raw = out.get(key)
        if not raw or not Path(raw).expanduser().exists():
            continue
        path = Path(raw).expanduser().resolve()
        try:
            out[key] = str(path.relative_to(working_dir))
        except ValueError:
            note(f"tlsearch: {key} {raw} is outside the working directory {working_dir}; it must exist "
                 "at that path on the cluster nodes")
    return out


def pip_requirements() -> list[str]:
    """tlsearch's own requirements, without extras and without ray (the cluster's Ray is kept)."""
    try:
        requires = importlib.metadata.requires("tlsearch") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    keep = [req for req in requires if "extra ==" not in req]
    return [req.split(";")[0].strip() for req in keep if not re.match(r"^ray\b", req.strip())]


def runtime_env(working_dir: Path, install: bool) -> dict[str, Any]:
    import tlsearch

    env: dict[str, Any] = {
        "working_dir": str(working_dir),
        "py_modules": [str(Path(tlsearch.__file__).parent)],
        "excludes": list(EXCLUDES),
        "env_vars": {"RAY_TRAIN_V2_ENABLED": "1"},
    }
    if install:
        env["pip"] = {"packages": pip_requirements(), "pip_check": False}
    return env


@dataclass(frozen=True)
class JobRequest:
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]


def job_request(
    run_args: Sequence[str], working_dir: Path, install: bool, metadata: Mapping[str, str]
) -> JobRequest:
    command = shlex.join(["python", "-m", "tlsearch", "run", *run_args])
    return JobRequest(command, runtime_env(working_dir, install), {k: str(v) for k, v in metadata.items()})


def plan_submission(
    conn: Connection, params: Sequence[click.Parameter], options: Mapping[str, Any], *,
    storage_path: str | None, shared_storage: bool, working_dir: str | Path, install: bool,
    note: Callable[[str], None],
) -> JobRequest:
    """Check the search locally, decide where results go, and build the job that runs it on the cluster."""
    import tlsearch
    from tlsearch.config import build_config

    run_only = {k: v for k, v in options.items() if k != "verbose"}
    config = build_config(run_only.pop("config_file", None), **run_only)
    given = options.get("results_dir")
    if storage_path and given and storage_path != given:
        raise ClusterError(f"--storage-path {storage_path!r} and --results-dir {given!r} differ; "
                           "give one of them")
    storage = storage_path or config.results_dir
    where = f"the cluster at {conn.address}"
    multi_node = False
    if not is_remote(storage):
        shape = cluster_shape(conn)
        multi_node = shape.multi_node(config.use_gpu, is_loopback(urlsplit(conn.address).hostname or ""))
        known = shape.nodes is not None
        where += f" ({shape.nodes} node(s) alive)" if known else " (its nodes could not be listed)"
    storage = check_storage(storage, multi_node=multi_node, shared=shared_storage, where=where)
    folder = Path(working_dir).expanduser().resolve()
    values = ship_paths({**options, "results_dir": storage}, folder, note)
    metadata = {"submitted_by": "tlsearch", "tlsearch_version": tlsearch.__version__, "results_dir": storage}
    return job_request(entrypoint_args(params, values), folder, install, metadata)


def submit(conn: Connection, request: JobRequest) -> str:
    job_client = client(conn)
    with _errors(conn, "submit the job to"):
        return str(job_client.submit_job(
            entrypoint=request.entrypoint, runtime_env=request.runtime_env, metadata=request.metadata
        ))


def job_status(conn: Connection, job_id: str) -> dict[str, Any]:
    job_client = client(conn)
    with _errors(conn, f"get job {job_id} from"):
        info = job_client.get_job_info(job_id)
    return {"job_id": job_id, "status": str(getattr(info.status, "value", info.status)),
            "message": info.message or "", "entrypoint": info.entrypoint or ""}


def job_logs(conn: Connection, job_id: str) -> str:
    job_client = client(conn)
    with _errors(conn, f"get the logs of job {job_id} from"):
        return str(job_client.get_job_logs(job_id))


def stop_job(conn: Connection, job_id: str) -> bool:
    job_client = client(conn)
    with _errors(conn, f"stop job {job_id} on"):
        return bool(job_client.stop_job(job_id))
