"""``attnlens dashboard``: serve the Streamlit app over a trace root (registered with the
``attnlens.commands`` entry point, so the core CLI never imports the dashboard)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from capture.store import ROOT_ENV, trace_root


def app_path() -> Path:
    spec = importlib.util.find_spec("streamlit_app")
    if spec is not None and spec.origin:
        return Path(spec.origin)
    return Path(__file__).resolve().parents[1] / "streamlit_app.py"


def streamlit_command(root: Path, host: str, port: int, open_browser: bool = False) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(app_path()),
            "--server.address", host, "--server.port", str(port),
            "--server.headless", "false" if open_browser else "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--", "--root", str(root)]


def cmd_dashboard(args) -> int:
    root = trace_root(args.root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"trace root {root} does not exist (capture runs first, e.g. `attnlens demo`)")
    if not app_path().is_file():
        raise FileNotFoundError(f"dashboard app not found at {app_path()}")
    print(f"attnlens dashboard: serving {root} at http://{args.host}:{args.port}  (Ctrl-C stops)", flush=True)
    env = {**os.environ, ROOT_ENV: str(root)}
    try:
        return subprocess.call(streamlit_command(root, args.host, args.port, args.open), env=env)
    except KeyboardInterrupt:
        return 0


def register(sub) -> None:
    p = sub.add_parser("dashboard", help="serve the dashboard (Streamlit) over a trace root")
    p.add_argument("--root", help=f"trace root (default ${ROOT_ENV} or data/traces)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--open", action="store_true", help="open a browser tab")
    p.set_defaults(func=cmd_dashboard)
