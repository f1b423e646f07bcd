"""Every command and code block of README.md and docs/ runs as written, in document order, on a copy
of the repository (so an explicit ``--out`` onto a shipped file cannot touch the checkout).

- ``bash`` blocks, and plain blocks made only of commands, run line by line with bash; ``python``
  blocks run in a fresh interpreter;
- placeholders are filled the way the README says to get them: ``<run-id>`` and
  ``<baseline-run-id>`` from ``attnlens runs --json`` (a perturbed demo run and the unperturbed run
  of its prompt and seed), ``<scheduler-address>`` from a local Dask scheduler, ``<root>`` = the
  default root;
- commands that take minutes at their full size get the extra flags in ``SMALL`` (the README says
  so); every entry must match one command, so the table cannot outlive the README;
- servers (``attnlens dashboard``) must answer on their port, then are stopped with Ctrl-C;
- README command 1's install steps are the suite's own install (.ci/test, checked); its
  ``attnlens`` steps run; README command 2 *is* this suite;
- inline ``attnlens ...`` commands in prose are checked by the real argument parser, and inline
  ``python ...`` commands' flags against the script's ``--help``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
COMMANDS = ("attnlens", "python", "python3", "bash", "pip", ".")
PROMPT = "a large red circle moving right on a plain background"

# command (as written, comment dropped) -> flags appended when the suite runs it; README.md says so
SMALL = {
    "attnlens study --root data/traces": f'--steps 2 --seed 0 --prompt "{PROMPT}"',
    "attnlens study --root <root> --name paper-study --model demo --out docs/study --seed 0 1":
        f'--steps 2 --seed 0 --prompt "{PROMPT}"',  # the same runs as above: a resume, then the report
    "python -m capture.models.demo_train --out build/demo-run":
        "--vae-steps 2 --unet-steps 2 --decoder-steps 2 --batch 2",
    "python -m capture.models.demo_eval --pipeline data/demo/model": "--clips 4 --steps 4",
    "python -m capture.models.demo_traces --root build/demo-traces": "--prompts 1 --steps 4",
    "python -m capture.models.demo_direction --resample --fit 200": "--fit 2 --clips 2 --renders 4",
    "python -m capture.models.world_classifier --out build/classifier": "--steps 2 --eval-clips 8",
    "attnlens compare --clips 16 --seed 0 1 --scale 3": "--clips 1 --seed 0 --num-steps 4",
}
# what README command 1 installs before its attnlens steps; .ci/test installs the same
SETUP = ("python3 -m venv .venv", ". .venv/bin/activate", "pip install torch==2.13.0", "pip install -e .")
SKIP = {"bash .ci/test": "README command 2 is this very suite (CI runs it)"}

pytestmark = pytest.mark.slow


# --- reading the documents -------------------------------------------------------------------------
def blocks(path: Path) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", path.read_text(), re.S | re.M)]


def command_lines(body: str) -> list[str]:
    """A block's commands: continuation lines joined, blank lines and whole-line comments dropped."""
    out, cur = [], ""
    for line in body.splitlines():
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        if cur.strip() and not cur.lstrip().startswith("#"):
            out.append(" ".join(cur.split()))
        cur = ""
    return out


def is_command(line: str) -> bool:
    return line.split()[0] in COMMANDS


def strip_comment(line: str) -> str:
    """The command without a trailing ``# comment`` (a ``#`` inside quotes is kept)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] == " "):
            return line[:i].rstrip()
    return line.rstrip()


def executable_blocks():
    """(doc, language, [commands]) for every block that is meant to be run."""
    for doc in DOCS:
        for lang, body in blocks(doc):
            if lang == "python":
                yield doc, "python", [body]
            elif lang in ("bash", "sh", ""):
                lines = command_lines(body)
                if lang == "" and not (lines and all(is_command(c) for c in lines)):
                    continue  # a layout or output listing, not commands
                bad = [c for c in lines if not is_command(c)]
                assert not bad, f"{doc.name}: a bash block line that is not a command: {bad[0]!r}"
                yield doc, "bash", [strip_comment(c) for c in lines]


# --- running them ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Session:
    """One copy of the repository in which the documents' commands run one after another."""

    def __init__(self, work: Path):
        self.work = work
        bindir = str(Path(sys.executable).parent)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNLENS_")}
        self.env.update(HF_HUB_OFFLINE="1", PATH=bindir + os.pathsep + os.environ.get("PATH", ""),
                        PYTHONUNBUFFERED="1")
        self.used_small: set[str] = set()
        self.timings: list[tuple[str, float]] = []
        self.values: dict[str, str] = {"<root>": "data/traces"}

    def sh(self, cmd: str, timeout: int = 900) -> subprocess.CompletedProcess:
        t = time.monotonic()
        p = subprocess.run(["bash", "-c", cmd], cwd=self.work, env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        self.timings.append((cmd, time.monotonic() - t))
        assert p.returncode == 0, f"`{cmd}` exited {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
        return p

    def fill(self, cmd: str) -> str:
        for ph in re.findall(r"<[a-z-]+>", cmd):
            if ph not in self.values:
                self.values.update(self.resolve(ph))
            assert ph in self.values, f"no value for placeholder {ph} in `{cmd}`"
            cmd = cmd.replace(ph, self.values[ph])
        return cmd

    def resolve(self, ph: str) -> dict[str, str]:
        if ph in ("<run-id>", "<baseline-run-id>"):
            runs = json.loads(self.sh("attnlens runs --json").stdout)
            done = [r for r in runs if r["status"] == "complete" and r["model"] == "demo"]
            for r in sorted(done, key=lambda r: r["run"], reverse=True):
                if r["perturbation"]:
                    base = [b for b in done if not b["perturbation"] and b["prompt"] == r["prompt"]
                            and b["seed"] == r["seed"]]
                    if base:
                        return {"<run-id>": r["run"], "<baseline-run-id>": base[0]["run"]}
            raise AssertionError("no perturbed demo run with a baseline in the root")
        if ph == "<scheduler-address>":
            return {ph: self.scheduler()}
        return {}

    def scheduler(self) -> str:
        from distributed import LocalCluster

        cwd = os.getcwd()
        os.chdir(self.work)  # workers resolve the default trace root from their working directory
        try:
            self.cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
        finally:
            os.chdir(cwd)
        return self.cluster.scheduler_address

    def serve(self, cmd: str) -> None:
        port = free_port()
        t = time.monotonic()
        p = subprocess.Popen(["bash", "-c", f"exec {cmd} --port {port}"], cwd=self.work, env=self.env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline, ok = time.monotonic() + 180, False
            while time.monotonic() < deadline and p.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as r:
                        ok = r.status == 200 and r.read().strip() == b"ok"
                except OSError:
                    pass
                if ok:
                    break
                time.sleep(0.5)
            assert ok, f"`{cmd}` did not serve on port {port}: {p.poll()=}"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
                assert r.status == 200
        finally:
            p.send_signal(signal.SIGINT)
            try:
                out, _ = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
        self.timings.append((cmd + " (serve, then Ctrl-C)", time.monotonic() - t))
        assert p.returncode in (0, 130), f"`{cmd}` ended with {p.returncode} after Ctrl-C:\n{out[-2000:]}"

    def run_line(self, line: str) -> None:
        if line in SKIP:
            return
        parts = [c.strip() for c in line.split("&&")]
        setup = [c for c in parts if c in SETUP]
        if setup:  # README command 1: the suite itself was installed the same way
            ci = (REPO / ".ci" / "test").read_text()
            assert "torch==2.13.0" in ci and "pip install -q -e" in ci, ".ci/test no longer installs as command 1 does"
            assert parts[: len(setup)] == list(SETUP), f"install steps changed: {parts}"
        for c in parts[len(setup):]:
            key = c
            if key in SMALL:
                self.used_small.add(key)
                c = f"{c} {SMALL[key]}"
            c = self.fill(c)
            if c.startswith("attnlens dashboard"):
                self.serve(c)
                continue
            p = self.sh(c)
            self.check(key, p)

    def check(self, cmd: str, p) -> None:
        """What a command's output must show, beyond exiting 0."""
        if cmd.startswith("attnlens metrics"):
            assert "world_colour_correct=" in p.stdout, f"demo run without world metrics:\n{p.stdout}"
        if cmd.startswith("attnlens capture"):
            assert re.search(r"^\d{8}-\d{6}-[0-9a-f]{6}$", p.stdout, re.M), p.stdout

    def run_python(self, code: str) -> None:
        code += "\nassert ds.attrs['model'] == 'tiny-animatediff', ds.attrs['model']\n" if "load_pipeline" in code else ""
        t = time.monotonic()
        p = subprocess.run([sys.executable, "-c", code], cwd=self.work, env=self.env, capture_output=True, text=True,
                           timeout=600)
        self.timings.append(("python block", time.monotonic() - t))
        assert p.returncode == 0, p.stderr[-3000:]


def copy_repo(dst: Path) -> Path:
    skip = {".git", ".venv", "build", "__pycache__", ".pytest_cache", "traces", "node_modules"}
    shutil.copytree(REPO, dst, ignore=lambda d, names: [n for n in names if n in skip or n.endswith(".egg-info")])
    return dst


def test_every_documented_command_runs(tmp_path):
    s = Session(copy_repo(tmp_path / "repo"))
    try:
        for doc, lang, cmds in executable_blocks():
            for c in cmds:
                if lang == "python":
                    s.run_python(c)
                else:
                    s.run_line(c)
    finally:
        if getattr(s, "cluster", None) is not None:
            s.cluster.close()
        report = "\n".join(f"{t:7.1f} s  {c}" for c, t in s.timings)
        print("\n" + report)
        (REPO / "build").mkdir(exist_ok=True)
        (REPO / "build" / "readme-commands.txt").write_text(report + "\n")
    unused = sorted(set(SMALL) - s.used_small)
    assert not unused, f"SMALL entries that match no documented command (stale): {unused}"
    assert not (tmp_path / "repo" / "data" / "traces").is_symlink()


# --- inline commands in prose ----------------------------------------------------------------------
def inline_commands(prefix: str, needs_flag: bool) -> list[tuple[str, str]]:
    """Inline code spans in prose that are commands (with ``needs_flag``: only those with a ``--`` option)."""
    out = []
    for doc in [*DOCS, *sorted((REPO / "data").rglob("README.md"))]:
        text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.S | re.M)
        pattern = r"`(%s [^`]*--[^`]*)`" if needs_flag else r"`(%s [^`]+)`"
        out += [(doc.name, m) for m in re.findall(pattern % re.escape(prefix), text)]
    return out


def test_inline_attnlens_commands_parse():
    from capture.cli import build_parser

    found = inline_commands("attnlens", needs_flag=True)
    assert len(found) >= 5
    for doc, cmd in found:
        argv = shlex.split(cmd.replace("[", "").replace("]", ""))[1:]
        try:
            build_parser().parse_args(argv)
        except SystemExit as e:
            pytest.fail(f"{doc}: `{cmd}` does not parse (exit {e.code})")


def test_inline_python_commands_know_their_flags():
    found = inline_commands("python", needs_flag=False)
    assert found, "no inline python commands found"
    helps: dict[str, str] = {}
    for doc, cmd in found:
        argv = shlex.split(cmd.replace("[...]", ""))
        target = argv[1:3] if argv[1] == "-m" else argv[1:2]
        key = " ".join(target)
        if key not in helps:
            p = subprocess.run([sys.executable, *target, "--help"], cwd=REPO, capture_output=True, text=True,
                               timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            assert p.returncode == 0, f"{doc}: `{key} --help` failed: {p.stderr[-500:]}"
            helps[key] = p.stdout
        for flag in [a.split("=")[0] for a in argv if a.startswith("--")]:
            assert re.search(rf"(^|\s|\[){re.escape(flag)}\b", helps[key]), f"{doc}: `{cmd}`: {key} has no {flag}"
