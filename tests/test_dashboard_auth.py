"""Serving beyond loopback needs an access token, checked before any data is shown (issue 14)."""

from __future__ import annotations

import sys

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import auth, cli

from .test_store import write_run

APP = str(cli.app_path())


def test_loopback_and_other_hosts():
    for h in ("127.0.0.1", "127.3.4.5", "localhost", "::1", "[::1]"):
        assert auth.is_loopback(h), h
    for h in ("0.0.0.0", "192.168.1.4", "::", "myhost.example"):
        assert not auth.is_loopback(h), h
    assert auth.token_for("127.0.0.1", None) == (None, False)
    token, generated = auth.token_for("0.0.0.0", None)
    assert generated and len(token) >= 20
    assert auth.token_for("0.0.0.0", "s3cret") == ("s3cret", False)


def test_launcher_passes_a_token_for_a_shared_host(tmp_path, monkeypatch, capsys):
    """--host beyond loopback without --password: a token is generated, printed with the URL and
    given to the server through its environment (the server itself is not started here)."""
    seen = {}
    monkeypatch.setattr(cli, "supervise", lambda cmd, env: seen.update(cmd=cmd, env=env) or 0)
    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    (tmp_path / "runs").mkdir()
    args = cli.argparse_namespace(root=str(tmp_path), host="0.0.0.0", port=8999, open=False, password=None)
    assert cli.cmd_dashboard(args) == 0
    out = capsys.readouterr().out
    token = seen["env"][auth.TOKEN_ENV]
    assert f"?token={token}" in out and "reachable from other machines" in out
    assert token not in " ".join(seen["cmd"])
    args = cli.argparse_namespace(root=str(tmp_path), host="127.0.0.1", port=8999, open=False, password=None)
    cli.cmd_dashboard(args)
    assert auth.TOKEN_ENV not in seen["env"]


@pytest.fixture
def shared_root(tmp_path, monkeypatch):
    root = tmp_path / "traces"
    w, _ = write_run(root, 0, prompt="a very private prompt")
    monkeypatch.setenv("ATTNLENS_ROOT", str(root))
    monkeypatch.setenv(auth.TOKEN_ENV, "correct-horse")
    monkeypatch.setattr(sys, "argv", ["streamlit"])
    from dashboard import cache

    cache.reload()
    return w.dir.name


def _everything(at) -> str:
    return " ".join(str(getattr(e, "value", "")) for kind in ("markdown", "text", "caption", "title", "header")
                    for e in at.get(kind)) + " ".join(str(e.proto) for e in at.get("arrow_data_frame"))


def test_without_the_token_nothing_is_shown(shared_root):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert "runs in" not in _everything(at) and not at.get("arrow_data_frame") and not at.get("dataframe")
    assert at.text_input(key="auth_token") is not None
    at.text_input(key="auth_token").input("wrong")
    at.button(key="auth_submit").click().run()
    assert "runs in" not in _everything(at) and [e.value for e in at.error] == ["wrong token"]


def test_the_token_opens_the_app(shared_root):
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["token"] = "correct-horse"
    at.run()
    assert not at.exception and "1 of 1 runs" in _everything(at)
    at2 = AppTest.from_file(APP, default_timeout=60).run()
    at2.text_input(key="auth_token").input("correct-horse")
    at2.button(key="auth_submit").click().run()
    assert "1 of 1 runs" in _everything(at2)
