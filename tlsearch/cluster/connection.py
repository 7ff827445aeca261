"""Where the cluster is and how to reach it safely: the dashboard address, the auth token, the job client.

The token (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) only ever travels in the
``Authorization`` header (:func:`auth_headers`), never in output (:func:`redact`); :func:`check_address` refuses
plain ``http://`` to a non-loopback host without a token unless ``insecure``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tlsearch.errors import ClusterError, TLSearchError

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

    with errors(conn, "connect to"):
        return JobSubmissionClient(conn.address, headers=conn.headers, verify=conn.verify)


@contextmanager
def errors(conn: Connection, doing: str) -> Iterator[None]:
    """Turn the client's exceptions into one redacted line."""
    try:
        yield
    except TLSearchError:
        raise
    except Exception as exc:  # noqa: BLE001 - requests, Ray and HTTP errors all become one line
        message = redact(one_line(str(exc) or type(exc).__name__), conn.token)
        raise ClusterError(f"cannot {doing} the Ray dashboard at {conn.address}: {message}") from None


def one_line(text: str) -> str:
    """An error message on one line, at most 300 characters."""
    line = " ".join(text.split())
    return line if len(line) <= 300 else line[:297] + "..."
