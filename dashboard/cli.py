"""``attnlens dashboard``: serve the Streamlit app over a trace root (registered with the
``attnlens.commands`` entry point, so the core CLI never imports the dashboard)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

from capture.root import ROOT_ENV, trace_root


def app_path() -> Path:
    spec = importlib.util.find_spec("streamlit_app")
    if spec is not None and spec.origin:
        return Path(spec.origin)
    return Path(__file__).resolve().parents[1] / "streamlit_app.py"


def streamlit_command(root: Path, host: str, port: int, open_browser: bool = False) -> list[str]:
    # dashboard.serve preloads the app's modules, then runs Streamlit's CLI with these arguments
    return [sys.executable, "-m", "dashboard.serve", "run", str(app_path()),
            "--server.address", host, "--server.port", str(port),
            "--server.headless", "false" if open_browser else "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            # no full garbage collection after every script run: it holds the GIL for 0.1-0.5 s
            # on a server with thousands of runs' tables cached, stalling every other session
            # (a third of the server's script time with 5 sessions); Python's own GC still runs
            "--runner.postScriptGC", "false",
            "--client.toolbarMode", "minimal",  # no "Deploy" button: this is a workbench, not an app to publish
            "--", "--root", str(root)]


def cmd_dashboard(args) -> int:
    root = trace_root(args.root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"trace root {root} does not exist (capture runs first, e.g. `attnlens demo`)")
    if not app_path().is_file():
        raise FileNotFoundError(f"dashboard app not found at {app_path()}")
    from .auth import TOKEN_ENV, is_loopback, token_for

    token, generated = token_for(args.host, args.password)
    url = f"http://{args.host}:{args.port}"
    print(f"attnlens dashboard: serving {root} at {url}  (Ctrl-C stops)", flush=True)
    if not is_loopback(args.host):
        print(f"attnlens dashboard: {args.host} is reachable from other machines; every page asks for the access "
              "token first (anyone with it can read this root and add notes)", flush=True)
    if token and generated:
        print(f"attnlens dashboard: access token {token}  (open {url}/?token={token})", flush=True)
    env = {**os.environ, ROOT_ENV: str(root)}
    env.pop(TOKEN_ENV, None)
    if token:
        env[TOKEN_ENV] = token  # to the server through its environment, not its command line
    return supervise(streamlit_command(root, args.host, args.port, args.open), env=env)


# signals that stop the launcher; each is passed on to the server it started
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, n))


def _child_setup() -> None:
    """In the child, before exec: its own process group (so the launcher alone decides what it
    is sent), and on Linux a SIGTERM from the kernel if the launcher dies, even by SIGKILL."""
    os.setpgid(0, 0)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the launcher's signal handlers still cover stops
        pass


def _signal_group(child: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(child.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def supervise(cmd: list[str], env: dict | None = None, grace: float = 5.0, poll: float = 0.2) -> int:
    """Run ``cmd`` as a child process group that lives exactly as long as this process.

    SIGTERM, SIGINT and SIGHUP to the launcher are passed on to the child's group (SIGINT as
    SIGINT, the others as SIGTERM); whatever is still running ``grace`` seconds later is killed.
    Returns the child's exit status, or 0 when it ended because the launcher was told to stop, so
    a server that dies on its own ends the launcher with its status.
    """
    import time

    child = subprocess.Popen(cmd, env=env, preexec_fn=_child_setup if os.name == "posix" else None)
    stop_at: list[float] = []

    def forward(signum, _frame):
        if not stop_at:
            stop_at.append(time.monotonic())
        _signal_group(child, signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        while True:
            try:
                rc = child.wait(timeout=poll)
                break
            except subprocess.TimeoutExpired:
                if stop_at and time.monotonic() - stop_at[0] > grace:
                    _signal_group(child, signal.SIGKILL)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if child.poll() is None:  # an error in the launcher itself: never leave the server behind
            _signal_group(child, signal.SIGKILL)
            child.wait()
    _signal_group(child, signal.SIGKILL)  # anything the server itself started and left
    if stop_at:
        return 0
    return rc if rc >= 0 else 128 - rc


def argparse_namespace(**kw):
    """The arguments of `attnlens dashboard` as the parser makes them (for callers and tests)."""
    import argparse

    return argparse.Namespace(**kw)


def register(sub) -> None:
    p = sub.add_parser("dashboard", help="serve the dashboard (Streamlit) over a trace root")
    p.add_argument("--root", help=f"trace root (default ${ROOT_ENV} or data/traces)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--open", action="store_true", help="open a browser tab")
    p.add_argument("--password", help="access token every client must give (default: none on 127.0.0.1; generated and "
                   "printed when --host reaches other machines; or $ATTNLENS_DASHBOARD_TOKEN)")
    p.set_defaults(func=cmd_dashboard)
