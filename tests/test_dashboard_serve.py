"""The dashboard's server process: what it loads before the first session, and how it is started."""

import sys

from dashboard import cache, cli, serve
from tests.dashboard_root import make_root


def test_server_command_preloads_and_skips_the_per_run_gc(tmp_path):
    cmd = cli.streamlit_command(tmp_path, "127.0.0.1", 8599)
    assert cmd[1:4] == ["-m", "dashboard.serve", "run"]
    assert cmd[cmd.index("--runner.postScriptGC") + 1] == "false"
    assert cmd[cmd.index("--server.fileWatcherType") + 1] == "none"
    assert cmd[-2:] == ["--root", str(tmp_path)]


def test_open_root_leaves_the_served_root_open(tmp_path, monkeypatch, caplog):
    ids = make_root(tmp_path)
    monkeypatch.setattr(sys, "argv", cli.streamlit_command(tmp_path, "127.0.0.1", 8599)[2:])
    cache.reload()
    try:
        assert serve.open_root() >= 0
        assert "could not open" not in caplog.text  # the root and its first queries worked
        tr = cache.root()
        assert tr is cache.root()  # opened once, before any session
        assert str(tr.root) == str(tmp_path.resolve())
        assert set(ids.values()) <= set(tr.runs()["run"])
    finally:
        cache.reload()


def test_open_root_reports_a_missing_root_instead_of_failing(tmp_path, monkeypatch, caplog):
    missing = tmp_path / "nope"
    monkeypatch.setattr(sys, "argv", ["serve", "run", "app.py", "--", "--root", str(missing)])
    cache.reload()
    try:
        serve.open_root()
        assert "could not open the trace root" in caplog.text
    finally:
        cache.reload()


def test_preload_prints_no_streamlit_runtime_warnings(tmp_path):
    """The server's warm-up runs before Streamlit's runtime exists; its expected 'no runtime'
    warnings are not shown in the user's terminal."""
    import subprocess

    make_root(tmp_path)
    code = ("import sys\n"
            f"sys.argv = ['serve', 'run', 'app.py', '--', '--root', {str(tmp_path)!r}]\n"
            "from dashboard import serve\n"
            "restore = serve._quiet_streamlit()\n"
            "serve.preload(); serve.open_root(); restore()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "No runtime found" not in out.stderr + out.stdout
    assert "missing ScriptRunContext" not in out.stderr + out.stdout
