"""`attnlens dashboard` stops the Streamlit server it started on SIGTERM, SIGINT and SIGHUP, and
exits with the server's status when the server dies on its own (issue 17)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest

from tests.browser import free_port

pytestmark = pytest.mark.slow


def _port_free(port: int) -> bool:
    """Whether a new server could listen on the port (SO_REUSEADDR, as Streamlit's own server sets
    it: closed connections in TIME_WAIT do not count, a listening socket does)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
        return True


def _start(root, port):
    # start_new_session: the signal goes to the launcher alone, as `kill PID` or systemd would send it
    proc = subprocess.Popen([sys.executable, "-m", "capture.cli", "dashboard", "--root", str(root), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
        assert proc.poll() is None, "the dashboard exited before serving"
    proc.kill()
    raise TimeoutError("dashboard did not come up")


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: signal.Signals(s).name)
def test_signal_stops_the_server(tmp_path, signum):
    root = tmp_path / "traces"
    root.mkdir()
    port = free_port()
    proc = _start(root, port)
    children = _descendants(proc.pid)
    assert children, "the launcher should run the server as its child"
    proc.send_signal(signum)
    try:
        rc = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"the launcher did not exit after {signal.Signals(signum).name}")
    left = _gone(children, timeout=20)
    for p in left:
        p.kill()
    assert not left, f"server processes left running: {[p.pid for p in left]}"
    assert rc == 0
    deadline = time.monotonic() + 10
    while not _port_free(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _port_free(port), f"port {port} still bound"


def test_server_death_ends_the_launcher_with_its_status(tmp_path):
    root = tmp_path / "traces"
    root.mkdir()
    port = free_port()
    proc = _start(root, port)
    server = next(p for p in _descendants(proc.pid) if "streamlit" in " ".join(p.cmdline()))
    server.kill()
    rc = proc.wait(timeout=20)
    assert rc == 128 + signal.SIGKILL
    assert not _gone(_descendants(proc.pid), timeout=5)


def test_launcher_killed_takes_the_server_along(tmp_path):
    """SIGKILL cannot be caught; on Linux the server is told by the kernel (parent-death signal)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("parent-death signal is Linux only")
    root = tmp_path / "traces"
    root.mkdir()
    port = free_port()
    proc = _start(root, port)
    children = _descendants(proc.pid)
    proc.kill()
    proc.wait(timeout=10)
    left = _gone(children, timeout=20)
    for p in left:
        p.kill()
    assert not left
