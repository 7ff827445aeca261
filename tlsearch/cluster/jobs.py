"""Searches as Ray jobs: submit, status, logs, stop, through :class:`ray.job_submission.JobSubmissionClient`.

:func:`plan_submission` takes the :class:`~tlsearch.config.SearchConfig` built exactly as ``tlsearch run`` builds
it, decides where results go (:func:`check_storage`: ``s3://``, ``gs://`` or an absolute path; a node-local path
is refused on a multi-node cluster unless marked shared), makes local paths inside the working directory
relative, and serialises the config. :func:`submit` writes it as a file into the working directory just for the
submission and runs ``python -m tlsearch run --config FILE`` there, with the tlsearch package and its
requirements.

Why a file in the working directory: on every node the job starts inside its unpacked copy of that directory,
so a relative name is the one path known before the job runs (a separate folder would have to be a
``py_modules`` entry, unpacked at a path the entrypoint cannot name), and the config travels in the same
content-hashed package as the files it refers to. Its name is unique per submission (concurrent submits from one
folder do not collide), it is removed once the package is uploaded, and :func:`upload_exclusion` refuses the
one way Ray could silently leave it behind: a ``.gitignore``/``.rayignore`` rule that matches it.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from tlsearch import storage
from tlsearch.cluster.connection import Connection, client, errors, is_loopback, one_line
from tlsearch.config import SearchConfig
from tlsearch.errors import ClusterError

EXCLUDES = [".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "results",
            "*.egg-info", "build", ".cache"]
PATH_FIELDS = ("weights", "data_dir", "dataset")
CONFIG_PREFIX = ".tlsearch-submit-"  # + a per-submission id + ".yaml": the shipped config, in the working dir


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
        rows = response.json()["data"]["result"]["result"]
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
    scheme = storage.scheme(path)
    if storage.is_remote(path):
        if not urlsplit(path).netloc:
            raise ClusterError(f"storage path {path!r} has no bucket; give {scheme}://BUCKET/DIR")
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


def ship_paths(config: SearchConfig, working_dir: Path, note: Callable[[str], None]) -> SearchConfig:
    """Local files inside the working directory become relative (they travel with the job).

    Others (outside it, or left out of the upload) become absolute, with a note that they must exist at that
    path on the cluster nodes. Names that are not local paths (``digits-split``, ``s3://...``) stay as given.
    Per-model weights (``a=FILE,b=FILE``) are shipped file by file.
    """
    changes: dict[str, Any] = {"address": None}  # the job runs on the cluster it was submitted to
    for key in PATH_FIELDS:
        raw = getattr(config, key)
        if key == "weights" and raw and "=" in raw:
            files = config.weights_by_model()
            changes[key] = ",".join(f"{model}={_ship(f'weights of {model}', path, working_dir, note)}"
                                    for model, path in files.items())
        elif raw:
            changes[key] = _ship(key, raw, working_dir, note)
    return replace(config, **changes)


def _ship(what: str, raw: str, working_dir: Path, note: Callable[[str], None]) -> str:
    """``raw`` as the job sees it: relative when it travels, else absolute (with a note), else as given."""
    if not storage.is_local(raw) or not Path(raw).expanduser().exists():
        return raw
    path = Path(raw).expanduser().resolve()
    if not path.is_relative_to(working_dir):
        problem = f"is outside the working directory {working_dir}"
    elif (rule := upload_exclusion(path, working_dir)) is not None:
        problem = f"is left out of the upload by {rule}"
    else:
        return path.relative_to(working_dir).as_posix()
    note(f"tlsearch: {what} {raw} {problem}; it must exist at {path} on the cluster nodes")
    return str(path)


def upload_exclusion(path: Path, working_dir: Path) -> str | None:
    """What keeps ``path`` (inside ``working_dir``) out of the job's package, or None when it travels.

    The rules are Ray's own, applied the way Ray packs a working directory: the runtime env's ``excludes``
    (:data:`EXCLUDES`), and every ``.rayignore`` and ``.gitignore`` (unless ``RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1``)
    in the folders from ``working_dir`` down to ``path``.
    """
    from ray._private.runtime_env import packaging  # Ray's matchers (ray is pinned to one minor version)

    ignore_files = [".rayignore"]
    if os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1":
        ignore_files.append(".gitignore")
    rules: list[tuple[str, Callable[[Path], bool]]] = [
        ("the runtime env's excludes", packaging._get_excludes(working_dir, EXCLUDES)),
    ]
    folder = working_dir
    for part in path.relative_to(working_dir).parts:
        for name in ignore_files:
            match = packaging._get_ignore_file(folder, name)
            if match is not None:
                rules.append((str(folder / name), match))
        folder = folder / part
        for rule, match in rules:
            if match(folder):
                return rule
    return None


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
    """A job to submit: the search's config as YAML, shipped as ``config_file`` in the working directory."""

    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    config_file: str
    config_yaml: str


def plan_submission(
    conn: Connection, config: SearchConfig, *, storage_path: str | None, shared_storage: bool,
    working_dir: str | Path, install: bool, verbose: int = 0, note: Callable[[str], None] = print,
) -> JobRequest:
    """Decide where results go and build the job that runs ``config`` on the cluster."""
    from tlsearch._version import __version__

    if storage_path and config.results_dir not in ("results", storage_path):
        raise ClusterError(f"--storage-path {storage_path!r} and --results-dir {config.results_dir!r} differ; "
                           "give one of them")
    folder = Path(working_dir).expanduser().resolve()
    config_file = f"{CONFIG_PREFIX}{uuid.uuid4().hex[:12]}.yaml"
    rule = upload_exclusion(folder / config_file, folder)
    if rule is not None:
        raise ClusterError(f"the job's config file {config_file} would be left out of the upload by {rule}; "
                           f"add the line '!{CONFIG_PREFIX}*.yaml' to it")
    target = storage_path or config.results_dir
    where = f"the cluster at {conn.address}"
    multi_node = False
    if not storage.is_remote(target):
        shape = cluster_shape(conn)
        multi_node = shape.multi_node(config.use_gpu, is_loopback(urlsplit(conn.address).hostname or ""))
        known = shape.nodes is not None
        where += f" ({shape.nodes} node(s) alive)" if known else " (its nodes could not be listed)"
    target = check_storage(target, multi_node=multi_node, shared=shared_storage, where=where)
    shipped = ship_paths(replace(config, results_dir=target), folder, note)
    command = ["python", "-m", "tlsearch", "run", "--config", config_file, *(["-v"] * verbose)]
    metadata = {"submitted_by": "tlsearch", "tlsearch_version": __version__, "results_dir": target}
    return JobRequest(shlex.join(command), runtime_env(folder, install), metadata, config_file,
                      yaml.safe_dump(shipped.to_dict(), sort_keys=False))


def submit(conn: Connection, request: JobRequest) -> str:
    """Write the config into the working directory, submit (the client packs and uploads the folder), clean up."""
    job_client = client(conn)
    path = Path(request.runtime_env["working_dir"]) / request.config_file
    try:
        with path.open("x") as out:  # never over an existing file
            out.write(request.config_yaml)
    except OSError as exc:
        raise ClusterError(f"cannot write the job's config into {path.parent}: {one_line(str(exc))}") from None
    try:
        with errors(conn, "submit the job to"):
            return str(job_client.submit_job(
                entrypoint=request.entrypoint, runtime_env=request.runtime_env, metadata=request.metadata
            ))
    finally:
        path.unlink(missing_ok=True)


def job_status(conn: Connection, job_id: str) -> dict[str, Any]:
    job_client = client(conn)
    with errors(conn, f"get job {job_id} from"):
        info = job_client.get_job_info(job_id)
    return {"job_id": job_id, "status": str(getattr(info.status, "value", info.status)),
            "message": info.message or "", "entrypoint": info.entrypoint or ""}


def job_logs(conn: Connection, job_id: str) -> str:
    job_client = client(conn)
    with errors(conn, f"get the logs of job {job_id} from"):
        return str(job_client.get_job_logs(job_id))


def stop_job(conn: Connection, job_id: str) -> bool:
    job_client = client(conn)
    with errors(conn, f"stop job {job_id} on"):
        return bool(job_client.stop_job(job_id))
