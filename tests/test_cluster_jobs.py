"""Searches as Ray jobs: submit, status, logs, stop and the storage rules, against a loopback stand-in for the
Ray dashboard that records every request (and keeps the packages the job client uploads).

Nothing here starts Ray or contacts a non-loopback address. The one end-to-end test against a real Ray
(``-m cluster``) is skipped unless asked for.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tlsearch import cluster, storage
from tlsearch.cli import cli
from tlsearch.cluster import jobs
from tlsearch.config import SearchConfig, build_config
from tlsearch.errors import ConfigError

TOKEN = "tok-3f9a1c-never-print-me"
JOB_ID = "raysubmit_test123"
REAL_HOME = os.environ.get("HOME", str(Path.home()))


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No real token file, no proxy in the way of 127.0.0.1, no inherited addresses."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_API_SERVER_ADDRESS", "TLSEARCH_STORAGE_PATH",
                 "RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
                 "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def test_insecure_address_is_refused_before_anything_is_contacted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    contacted: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        contacted.append(args)
        raise AssertionError("contacted the network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr("ray.job_submission.JobSubmissionClient", refuse)
    for command in (["submit", "--storage-path", "s3://bucket/x"], ["jobs", "status", JOB_ID],
                    ["jobs", "logs", JOB_ID], ["jobs", "stop", JOB_ID]):
        result = invoke(*command, "--address", "http://203.0.113.7:8265")
        assert result.exit_code == 2, result.output
        assert "refusing plain http to non-loopback host '203.0.113.7' without a token" in result.stderr
        assert "--insecure" in result.stderr
    assert contacted == []


# ------------------------------------------------------------------------------ loopback dashboard stub


class FakeDashboard(ThreadingHTTPServer):
    """Answers the few Ray dashboard endpoints the job client uses, and records every request."""

    def __init__(self, token: str | None, nodes: list[dict[str, Any]]) -> None:
        super().__init__(("127.0.0.1", 0), DashboardHandler)
        self.token = token
        self.nodes = nodes
        self.requests: list[dict[str, Any]] = []
        self.packages: dict[str, bytes] = {}  # what the job client uploaded, by gcs://... URI

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def paths(self, method: str) -> list[str]:
        return [r["path"] for r in self.requests if r["method"] == method]


class DashboardHandler(BaseHTTPRequestHandler):
    server: FakeDashboard

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it so
        pass

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.append({"method": method, "path": self.path, "headers": dict(self.headers),
                                     "body": body})
        if self.server.token and self.headers.get("Authorization") != f"Bearer {self.server.token}":
            return self._reply(401, {"error": "missing or wrong token"})
        path = self.path.split("?")[0]
        routes: dict[tuple[str, str], Callable[[], tuple[int, Any]]] = {
            ("GET", "/api/version"): lambda: (200, {"version": "4", "ray_version": "2.60.0", "ray_commit": "x"}),
            ("GET", "/api/v0/nodes"): lambda: (200, {"result": True, "msg": "", "data": {
                "result": {"total": len(self.server.nodes), "result": self.server.nodes}}}),
            ("POST", "/api/jobs/"): lambda: (200, {"job_id": None, "submission_id": JOB_ID}),
            ("GET", f"/api/jobs/{JOB_ID}"): lambda: (200, {
                "type": "SUBMISSION", "submission_id": JOB_ID, "status": "RUNNING",
                "entrypoint": "python -m tlsearch run", "message": "Job is currently running."}),
            ("GET", f"/api/jobs/{JOB_ID}/logs"): lambda: (200, {"logs": f"epoch 1\nenv RAY_AUTH_TOKEN={TOKEN}\n"}),
            ("POST", f"/api/jobs/{JOB_ID}/stop"): lambda: (200, {"stopped": True}),
        }
        if path.startswith("/api/packages/"):  # /api/packages/gcs/NAME.zip: exists? (GET), upload (PUT)
            uri = "gcs://" + path.rsplit("/", 1)[-1]
            if method == "PUT":
                self.server.packages[uri] = body
            return self._reply(200 if uri in self.server.packages else 404, {})
        status, payload = routes.get((method, path), lambda: (404, {"error": "not found"}))()
        self._reply(status, payload)

    def _reply(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")


def node(cpus: float = 2, gpus: float = 0, state: str = "ALIVE") -> dict[str, Any]:
    resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    return {"node_id": os.urandom(4).hex(), "state": state, "resources_total": resources}


@pytest.fixture
def dashboard() -> Iterator[FakeDashboard]:
    server = FakeDashboard(TOKEN, [node()])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "search.yaml").write_text("trials: 3\nmax_epochs: 2\n")
    return folder


def test_submit_sends_the_token_as_a_header_and_never_prints_it(
    dashboard: FakeDashboard, work_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    results = tmp_path / "shared-results"
    result = invoke("submit", "--address", dashboard.address, "--working-dir", str(work_dir), "--no-install",
                    "--config", str(work_dir / "search.yaml"), "--trials", "2", "--no-gpu", "--head-lr", "1e-3",
                    "--storage-path", str(results), "--name", "e2e")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{JOB_ID}\n"
    assert TOKEN not in result.output
    assert dashboard.requests and all(
        r["headers"].get("Authorization") == f"Bearer {TOKEN}" for r in dashboard.requests
    )
    assert "/api/v0/nodes?limit=10000&detail=true" in dashboard.paths("GET")  # a local path: nodes were counted
    (submitted,) = [json.loads(r["body"]) for r in dashboard.requests if r["path"] == "/api/jobs/"]
    command = shlex.split(submitted["entrypoint"])
    assert command[:5] == ["python", "-m", "tlsearch", "run", "--config"] and len(command) == 6
    assert command[5].startswith(".tlsearch-submit-") and not (work_dir / command[5]).exists()  # cleaned up
    env = submitted["runtime_env"]
    assert env["working_dir"].startswith("gcs://") and env["py_modules"][0].startswith("gcs://")
    assert "pip" not in env and env["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"
    assert submitted["metadata"]["results_dir"] == str(results)
    assert TOKEN not in json.dumps(submitted)


def search_with_every_kind_of_value(work_dir: Path, **flags: Any) -> SearchConfig:
    """Ranges, choices, fixed values, a weights file inside the working directory: built as `tlsearch run` does."""
    weights = work_dir / "weights" / "source.safetensors"
    weights.parent.mkdir(exist_ok=True)
    weights.write_bytes(b"x")
    return build_config(work_dir / "search.yaml", trials=2, use_gpu=True, precision="bf16", gpus_per_worker=0.5,
                        data_fraction="0.1,0.3", head_lr="1e-4:1e-2", freeze_depth="2", init="pretrained",
                        weights=str(weights), name="e2e", **flags)


def test_the_shipped_config_file_builds_the_same_search_on_the_cluster(work_dir: Path, tmp_path: Path) -> None:
    local = search_with_every_kind_of_value(work_dir, address="ray://10.0.0.1:10001")
    notes: list[str] = []
    request = cluster.plan_submission(cluster.Connection("http://127.0.0.1:1"), local, storage_path="s3://b/r",
                                      shared_storage=False, working_dir=work_dir, install=True, verbose=2,
                                      note=notes.append)
    command = shlex.split(request.entrypoint)
    assert command == ["python", "-m", "tlsearch", "run", "--config", request.config_file, "-v", "-v"]
    shipped = tmp_path / "on-the-cluster" / request.config_file
    shipped.parent.mkdir()
    shipped.write_text(request.config_yaml)
    remote = build_config(shipped)  # what `tlsearch run --config FILE` builds from it on the cluster
    # Only where things are differs: results on the bucket, weights relative to the job's working directory,
    # and no Ray address (the job joins the cluster it runs on).
    assert remote == dataclasses.replace(local, results_dir="s3://b/r", weights="weights/source.safetensors",
                                         address=None)
    assert (work_dir / str(remote.weights)).samefile(str(local.weights))
    assert notes == []
    pip = request.runtime_env["pip"]["packages"]
    assert any(p.startswith("timm") for p in pip) and not any(p.startswith("ray") for p in pip)


def uploaded_file(dashboard: FakeDashboard, package_uri: str, name: str) -> str:
    """A file from a package the job client uploaded (Ray zips the working directory's contents)."""
    with zipfile.ZipFile(io.BytesIO(dashboard.packages[package_uri])) as package:
        return package.read(name).decode()


def test_the_config_file_travels_in_the_uploaded_working_directory(
    dashboard: FakeDashboard, work_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    local = search_with_every_kind_of_value(work_dir)
    result = invoke("submit", "--address", dashboard.address, "--working-dir", str(work_dir), "--no-install",
                    "--config", str(work_dir / "search.yaml"), "--trials", "2", "--gpu", "--precision", "bf16",
                    "--gpus-per-worker", "0.5", "--data-fraction", "0.1,0.3", "--head-lr", "1e-4:1e-2",
                    "--freeze-depth", "2", "--init", "pretrained", "--weights", str(local.weights),
                    "--name", "e2e", "--storage-path", "s3://b/r")
    assert result.exit_code == 0, result.output
    assert "/api/v0/nodes" not in "".join(dashboard.paths("GET"))  # results on s3://: the nodes don't matter
    (submitted,) = [json.loads(r["body"]) for r in dashboard.requests if r["path"] == "/api/jobs/"]
    config_file = shlex.split(submitted["entrypoint"])[5]
    text = uploaded_file(dashboard, submitted["runtime_env"]["working_dir"], config_file)
    shipped = tmp_path / "on-the-cluster.yaml"
    shipped.write_text(text)
    assert build_config(shipped) == dataclasses.replace(local, results_dir="s3://b/r",
                                                        weights="weights/source.safetensors")
    assert uploaded_file(dashboard, submitted["runtime_env"]["working_dir"], "weights/source.safetensors") == "x"
    assert not list(work_dir.glob(".tlsearch-submit-*"))  # removed once the package was uploaded


def test_a_config_file_the_upload_would_leave_out_is_refused_before_contacting(
    dashboard: FakeDashboard, work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    (work_dir / ".gitignore").write_text(".*\n!.gitignore\n")
    base = ["submit", "--address", dashboard.address, "--working-dir", str(work_dir), "--storage-path", "s3://b/r"]
    result = invoke(*base)
    assert result.exit_code == 2
    assert f"would be left out of the upload by {work_dir / '.gitignore'}" in result.stderr
    assert "'!.tlsearch-submit-*.yaml'" in result.stderr
    assert dashboard.requests == [] and not list(work_dir.glob(".tlsearch-submit-*"))
    monkeypatch.setenv("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "1")  # Ray's switch: .gitignore no longer applies
    result = invoke(*base, "--no-install")
    assert result.exit_code == 0, result.output
    (work_dir / ".gitignore").write_text(".*\n!.gitignore\n!.tlsearch-submit-*.yaml\n")
    monkeypatch.delenv("RAY_RUNTIME_ENV_IGNORE_GITIGNORE")
    assert invoke(*base, "--no-install").exit_code == 0


def test_files_that_do_not_travel_get_absolute_paths_and_a_note(
    work_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(work_dir)  # relative paths are relative to where `tlsearch submit` runs
    (work_dir / ".gitignore").write_text("*.safetensors\n")
    (work_dir / "weights.safetensors").write_bytes(b"x")
    (work_dir / "results" / "data").mkdir(parents=True)  # `results` is in the runtime env's excludes
    (tmp_path / "outside").mkdir()
    config = SearchConfig(weights="weights.safetensors", data_dir=str(work_dir / "results" / "data"),
                          dataset=str(tmp_path / "outside"))
    notes: list[str] = []
    shipped = jobs.ship_paths(config, work_dir, notes.append)
    assert (shipped.weights, shipped.data_dir, shipped.dataset) == (
        str(work_dir / "weights.safetensors"), str(work_dir / "results" / "data"), str(tmp_path / "outside"))
    assert notes[0].startswith(f"tlsearch: weights weights.safetensors is left out of the upload by "
                               f"{work_dir / '.gitignore'}")
    assert "left out of the upload by the runtime env's excludes" in notes[1]
    assert f"is outside the working directory {work_dir}" in notes[2]
    assert all("must exist at" in note for note in notes) and len(notes) == 3
    named = jobs.ship_paths(SearchConfig(dataset="digits-split"), work_dir, notes.append)
    assert named.dataset == "digits-split" and len(notes) == 3  # a dataset name is not a path


def test_upload_exclusion_agrees_with_how_ray_packs_the_working_directory(tmp_path: Path) -> None:
    from ray._private.runtime_env import packaging

    root = tmp_path / "w"
    for name in ("a.py", "b.log", "keep.log", "sub/c.py", "sub/d.tmp", "sub/deep/e.py", "data/x.bin",
                 "results/r.parquet", ".hidden.yaml", "notes/.rayignore"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    (root / ".gitignore").write_text("*.log\n!keep.log\ndata/\n")
    (root / "sub" / ".rayignore").write_text("*.tmp\ndeep\n")
    packed: set[Path] = set()
    packaging._dir_travel(root, [packaging._get_excludes(root, jobs.EXCLUDES)], packed.add, include_gitignore=True)
    files = [p for p in root.rglob("*") if p.is_file()]
    assert {p for p in files if jobs.upload_exclusion(p, root) is None} == {p for p in files if p in packed}
    assert jobs.upload_exclusion(root / "sub" / "deep" / "e.py", root) == str(root / "sub" / ".rayignore")
    assert jobs.upload_exclusion(root / "a.py", root) is None


def test_importing_the_job_code_imports_neither_torch_nor_the_search() -> None:
    code = "import sys, tlsearch.cluster.jobs; print(sorted(m for m in ('torch', 'tlsearch.search', 'click') " \
           "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_node_local_storage_is_refused_on_a_multi_node_cluster(
    dashboard: FakeDashboard, work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    dashboard.nodes = [node(), node(cpus=8, gpus=1)]
    base = ["submit", "--address", dashboard.address, "--working-dir", str(work_dir), "--no-install"]
    result = invoke(*base, "--storage-path", "/data/results")
    assert result.exit_code == 2
    assert "storage path '/data/results' is node-local" in result.stderr
    assert "(2 node(s) alive)" in result.stderr and "s3://" in result.stderr
    assert "/api/jobs/" not in dashboard.paths("POST")
    assert invoke(*base, "--storage-path", "/mnt/nfs/results", "--shared-storage").exit_code == 0
    assert invoke(*base, "--storage-path", "s3://bucket/results").exit_code == 0
    assert dashboard.paths("POST").count("/api/jobs/") == 2


def test_a_head_without_gpus_counts_as_multi_node_for_a_gpu_search(
    dashboard: FakeDashboard, work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    result = invoke("submit", "--address", dashboard.address, "--working-dir", str(work_dir), "--gpu",
                    "--storage-path", "/data/results")
    assert result.exit_code == 2
    assert "has (or will add) more than one node" in result.stderr


def test_relative_storage_and_conflicting_flags_are_refused(dashboard: FakeDashboard, work_dir: Path) -> None:
    base = ["submit", "--address", dashboard.address, "--working-dir", str(work_dir)]
    result = invoke(*base)
    assert result.exit_code == 2 and "storage path 'results' is relative" in result.stderr
    result = invoke(*base, "--storage-path", "s3://a/b", "--results-dir", "s3://c/d")
    assert result.exit_code == 2 and "differ; give one of them" in result.stderr
    result = invoke(*base, "--storage-path", "hdfs://x/y")
    assert result.exit_code == 2 and "scheme 'hdfs' is not supported" in result.stderr
    result = invoke(*base, "--storage-path", "s3:///nobucket")
    assert result.exit_code == 2 and "has no bucket" in result.stderr


def test_wrong_token_is_one_line_without_the_token(
    dashboard: FakeDashboard, work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "wrong-" + TOKEN)
    result = invoke("jobs", "status", JOB_ID, "--address", dashboard.address)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: cannot connect to the Ray dashboard at {dashboard.address}:")
    assert TOKEN not in result.output


def test_jobs_status_logs_stop(dashboard: FakeDashboard, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    status = invoke("jobs", "status", JOB_ID, "--address", dashboard.address)
    assert status.exit_code == 0 and status.stdout == f"{JOB_ID}: RUNNING (Job is currently running.)\n"
    logs = invoke("jobs", "logs", JOB_ID, "--address", dashboard.address)
    assert logs.exit_code == 0 and "epoch 1" in logs.stdout
    assert TOKEN not in logs.output and "RAY_AUTH_TOKEN=<token>" in logs.stdout
    stop = invoke("jobs", "stop", JOB_ID, "--address", dashboard.address)
    assert stop.exit_code == 0 and stop.stdout == f"{JOB_ID}: stop requested\n"
    assert all(r["headers"].get("Authorization") == f"Bearer {TOKEN}" for r in dashboard.requests)


def test_token_file_from_home_is_used(dashboard: FakeDashboard, tmp_path: Path) -> None:
    token_file = Path(os.environ["HOME"]) / ".ray" / "auth_token"
    token_file.parent.mkdir(parents=True)
    token_file.write_text(TOKEN + "\n")
    result = invoke("jobs", "status", JOB_ID, "--address", dashboard.address)
    assert result.exit_code == 0, result.output
    assert TOKEN not in result.output


def test_unreachable_dashboard_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = invoke("jobs", "status", JOB_ID, "--address", f"http://127.0.0.1:{port}")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "cannot connect to the Ray dashboard" in result.stderr


# ------------------------------------------------------------------------------------------- GPU options


def test_mixed_precision_needs_gpu_and_is_checked_before_contacting(work_dir: Path) -> None:
    result = invoke("submit", "--address", "http://127.0.0.1:9", "--working-dir", str(work_dir),
                    "--precision", "bf16", "--storage-path", "s3://b/r")
    assert result.exit_code == 2
    assert "precision: got bf16 without --gpu" in result.stderr
    result = invoke("submit", "--address", "http://127.0.0.1:9", "--precision", "fp8")
    assert result.exit_code == 2 and "'fp8' is not one of 'auto', 'fp32', 'bf16', 'fp16'" in result.stderr


def test_gpu_options_are_validated_in_the_config() -> None:
    assert SearchConfig(use_gpu=True, precision="bf16", gpus_per_worker=0.5).precision == "bf16"
    with pytest.raises(ConfigError, match="precision: got fp16 without --gpu"):
        SearchConfig(precision="fp16")
    with pytest.raises(ConfigError, match="gpus_per_worker: must be > 0, got 0"):
        SearchConfig(use_gpu=True, gpus_per_worker=0)
    with pytest.raises(ConfigError, match="gpus_per_worker: got 2 without --gpu"):
        SearchConfig(use_gpu=False, gpus_per_worker=2)


def test_run_refuses_mixed_precision_without_gpu() -> None:
    result = invoke("run", "--precision", "fp16", "--no-gpu", "--trials", "1")
    assert result.exit_code == 2 and "precision: got fp16 without --gpu" in result.stderr


# --------------------------------------------------------------------------------------------- storage


def test_cluster_shape_decides_multi_node() -> None:
    assert cluster.ClusterShape(1, cpus=4).multi_node(use_gpu=False, loopback=True) is False
    assert cluster.ClusterShape(2, cpus=4).multi_node(use_gpu=False, loopback=True) is True
    assert cluster.ClusterShape(1, cpus=0).multi_node(use_gpu=False, loopback=True) is True  # CPU-less head
    assert cluster.ClusterShape(1, cpus=4).multi_node(use_gpu=True, loopback=True) is True  # GPUs autoscale in
    assert cluster.ClusterShape(None).multi_node(use_gpu=False, loopback=True) is False
    assert cluster.ClusterShape(None).multi_node(use_gpu=False, loopback=False) is True


# ------------------------------------------------------------------------------- real Ray, on request


@pytest.mark.slow
@pytest.mark.cluster
def test_submit_to_a_real_ray_cluster_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Submit a tiny search to a real two-node Ray and follow it to its tables.

    Uses TLSEARCH_TEST_CLUSTER (a dashboard URL) if set. Otherwise starts a 1-CPU head on 127.0.0.1 (dashboard and
    job API on 127.0.0.1:8265) and joins a second 1-CPU node to it on the same machine, so the two trials must run
    on different nodes. ``ray start`` refuses to join a second node while Ray is kept on loopback, so the nodes are
    started with ``ray.cluster_utils.Cluster``, Ray's own multi-node-on-one-machine harness. Both are stopped after.
    """
    import pyarrow.parquet as pq

    from tlsearch.search.session import _stay_on_loopback

    given = os.environ.get("TLSEARCH_TEST_CLUSTER")
    address = given or "http://127.0.0.1:8265"
    store = os.environ.get("TLSEARCH_TEST_STORAGE", str(tmp_path / "results"))
    monkeypatch.setenv("HOME", REAL_HOME)  # the real ~/.ray/auth_token, which Ray makes for local clusters
    # The job's `python` is this virtualenv's: Ray's job supervisor inherits this PATH from the nodes we start.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    head = None
    if given is None:
        from ray.cluster_utils import Cluster

        _stay_on_loopback()
        head = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": 8265,
            "node_ip_address": "127.0.0.1"})
        # Its own runtime-env folder: on one machine both nodes would unpack the job's working_dir into the
        # same place, and the second unpacking would delete the job driver's current directory under it.
        head.add_node(num_cpus=1, node_ip_address="127.0.0.1", runtime_env_dir_name="runtime_resources_node2")
        head.wait_for_nodes()
    try:
        submit = invoke("submit", "--address", address, "--working-dir", str(tmp_path), "--no-install",
                        "--dataset", "digits-split", "--model", "test_resnet", "--image-size", "16",
                        "--trials", "2", "--max-epochs", "2", "--val-size", "100", "--init", "scratch",
                        "--name", "e2e", "--storage-path", store, "--shared-storage")
        assert submit.exit_code == 0, submit.output
        job_id = submit.stdout.strip()
        deadline = time.monotonic() + 900
        status = ""
        while time.monotonic() < deadline:
            status = invoke("jobs", "status", job_id, "--address", address).stdout
            if any(word in status for word in ("SUCCEEDED", "FAILED", "STOPPED")):
                break
            time.sleep(5)
        logs = invoke("jobs", "logs", job_id, "--address", address).stdout
        assert "SUCCEEDED" in status, status + logs[-3000:]
        assert "search e2e finished" in logs
        if not storage.is_remote(store):
            trials = pq.read_table(Path(store) / "e2e" / "trials.parquet")
            assert trials.num_rows == 2
            assert set(trials["status"].to_pylist()) <= {"completed", "stopped"}
            if head is not None:
                assert len(set(trials["node_id"].to_pylist())) == 2, "the trials did not run on both nodes"
    finally:
        if head is not None:
            head.shutdown()


def test_each_models_weights_file_is_shipped_on_its_own(work_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(work_dir)
    (work_dir / "a.safetensors").write_bytes(b"x")
    (tmp_path / "b.safetensors").write_bytes(b"x")
    config = SearchConfig.from_dict({"model": "test_resnet,test_vit",
                                     "weights": f"test_resnet=a.safetensors,test_vit={tmp_path / 'b.safetensors'}"})
    notes: list[str] = []
    shipped = jobs.ship_paths(config, work_dir, notes.append)
    assert shipped.weights_by_model() == {"test_resnet": "a.safetensors",
                                          "test_vit": str(tmp_path / "b.safetensors")}
    assert len(notes) == 1 and notes[0].startswith(f"tlsearch: weights of test_vit {tmp_path / 'b.safetensors'} "
                                                   f"is outside the working directory {work_dir}")
