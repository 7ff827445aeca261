"""Where the cluster is and how to reach it: token sources, the auth header, redaction, and which dashboard
addresses are refused. Pure functions; nothing is contacted."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlsearch import cluster


def test_token_sources_in_order(tmp_path: Path) -> None:
    home = tmp_path / "h"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-home\n")
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert cluster.load_token({"RAY_AUTH_TOKEN": "from-env"}, home) == "from-env"
    assert cluster.load_token({"RAY_AUTH_TOKEN_PATH": str(token_file)}, home) == "from-file"
    assert cluster.load_token({}, home) == "from-home"
    assert cluster.load_token({}, tmp_path / "nobody") is None
    with pytest.raises(cluster.ClusterError, match="RAY_AUTH_TOKEN_PATH is .*not a file"):
        cluster.load_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "absent")}, home)
    assert cluster.auth_headers("abc") == {"Authorization": "Bearer abc"}
    assert cluster.auth_headers(None) == {}


@pytest.mark.parametrize("address", ["http://10.1.2.3:8265", "http://ray-head.example.com:8265",
                                     "http://[2001:db8::1]:8265"])
def test_check_address_refuses_plain_http_to_remote_without_token(address: str) -> None:
    with pytest.raises(cluster.ClusterError, match="refusing plain http"):
        cluster.check_address(address, token=None)
    assert cluster.check_address(address, token=None, insecure=True) == address
    assert cluster.check_address(address, token="t") == address


@pytest.mark.parametrize("address", ["http://127.0.0.1:8265", "http://localhost:8265/", "http://[::1]:8265",
                                     "https://ray.example.com"])
def test_check_address_accepts_loopback_and_https(address: str) -> None:
    assert cluster.check_address(address, token=None) == address.rstrip("/")


@pytest.mark.parametrize("address", ["ray://10.0.0.1:10001", "10.0.0.1:8265", "", "http://"])
def test_check_address_wants_a_dashboard_url(address: str) -> None:
    with pytest.raises(cluster.ClusterError, match="give the Ray dashboard URL"):
        cluster.check_address(address, token=None)


def test_the_token_never_shows_in_a_connection_or_redacted_text() -> None:
    conn = cluster.connect("http://127.0.0.1:8265", env={"RAY_AUTH_TOKEN": "s3cr3t-token"})
    assert conn.headers == {"Authorization": "Bearer s3cr3t-token"}
    assert "s3cr3t-token" not in repr(conn)
    assert cluster.redact("env RAY_AUTH_TOKEN=s3cr3t-token", conn.token) == "env RAY_AUTH_TOKEN=<token>"
    assert cluster.redact("unchanged", None) == "unchanged"
    with pytest.raises(cluster.ClusterError, match="address: none given"):
        cluster.connect(None, env={})


def test_a_token_over_plain_http_to_a_remote_host_is_flagged() -> None:
    assert cluster.sends_token_in_clear("http://10.1.2.3:8265", "t")
    assert not cluster.sends_token_in_clear("https://10.1.2.3:8265", "t")
    assert not cluster.sends_token_in_clear("http://127.0.0.1:8265", "t")
    assert not cluster.sends_token_in_clear("http://10.1.2.3:8265", None)
