"""Beyond one machine: :mod:`~tlsearch.cluster.validate` checks cluster files offline,
:mod:`~tlsearch.cluster.connection` reaches a dashboard safely, :mod:`~tlsearch.cluster.jobs` runs searches as
Ray jobs. Nothing here imports torch or the search."""

from tlsearch.cluster.connection import (
    Connection,
    auth_headers,
    check_address,
    connect,
    is_loopback,
    load_token,
    redact,
    sends_token_in_clear,
)
from tlsearch.cluster.jobs import (
    ClusterShape,
    JobRequest,
    check_storage,
    cluster_shape,
    job_logs,
    job_status,
    plan_submission,
    stop_job,
    submit,
)
from tlsearch.cluster.validate import Problem, validate_files
from tlsearch.errors import ClusterError

__all__ = [
    "ClusterError", "ClusterShape", "Connection", "JobRequest", "Problem", "auth_headers", "check_address",
    "check_storage", "cluster_shape", "connect", "is_loopback", "job_logs", "job_status", "load_token",
    "plan_submission", "redact", "sends_token_in_clear", "stop_job", "submit", "validate_files",
]
