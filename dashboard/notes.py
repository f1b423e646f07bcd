"""Team notes and saved layer selections, kept in the trace root so everyone opening it sees them.

Layout::

    <root>/notes/<created>-<random>.json        one note: target (run id or selection name),
                                                author, text, tags, created
    <root>/selections/<name>-<random>.json      one saved selection (capture.selection format)

Every note and selection is its own file, created under a temporary name and renamed into place,
so two people writing at once never touch the same file and a reader never sees half a note.
Files are never rewritten; a note is removed by deleting its file.

Plain Python: no streamlit, no torch.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from capture.selection import Selection, SelectionError

log = logging.getLogger(__name__)

NOTES_DIR = "notes"
SELECTIONS_DIR = "selections"
MAX_TEXT = 4000
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")  # characters replaced in file names
_NOTE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class Note:
    target: str  # a run id, or "selection:<name>"
    text: str
    author: str = ""
    tags: list[str] = field(default_factory=list)
    created: str = ""
    id: str = ""


class NotSaved(OSError):
    """A note or selection the trace root could not take: a root this user may only read (a team's
    shared root served by someone else), a full disk, a file where the folder should be."""


def _write_new(directory: Path, stem: str, text: str) -> Path:
    final = directory / f"{stem}-{secrets.token_hex(4)}.json"
    tmp = directory / f".{final.name}.{os.getpid()}.tmp"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, final)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise NotSaved(f"not saved: {directory} cannot be written by this dashboard's user "
                       f"({e.strerror or type(e).__name__})") from e
    return final


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_tags(text: str) -> list[str]:
    return sorted({t.strip().lower() for t in re.split(r"[,\s]+", text or "") if t.strip()})


def add_note(root, target: str, text: str, *, author: str = "", tags=()) -> Note:
    text = (text or "").strip()
    if not text and not tags:
        raise ValueError("a note needs text or a tag")
    if len(text) > MAX_TEXT:
        raise ValueError(f"a note is at most {MAX_TEXT} characters")
    note = Note(target=target, text=text, author=(author or "").strip()[:80], tags=list(tags), created=_now())
    path = _write_new(Path(root) / NOTES_DIR, note.created.replace(":", ""), json.dumps(asdict(note)))
    note.id = path.stem
    return note


def list_notes(root, target: str | None = None) -> list[Note]:
    """Notes of the root (of one target when given), oldest first; unreadable files skipped."""
    d = Path(root) / NOTES_DIR
    out = []
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.json")):
        try:
            raw = json.loads(p.read_text())
            note = Note(**{k: raw[k] for k in ("target", "text", "author", "tags", "created") if k in raw}, id=p.stem)
        except (OSError, ValueError, TypeError) as e:
            log.warning("skipping unreadable note %s: %s", p.name, e)
            continue
        if target is None or note.target == target:
            out.append(note)
    return sorted(out, key=lambda n: (n.created, n.id))


def delete_note(root, note_id: str) -> bool:
    if not _NOTE_ID.fullmatch(note_id or ""):
        return False
    p = Path(root) / NOTES_DIR / f"{note_id}.json"
    try:
        p.unlink()
    except FileNotFoundError:
        return False
    return True


def save_selection(root, name: str, selection: Selection) -> Path:
    stem = _SAFE.sub("_", name.strip())[:60].strip("_.")
    if not stem:
        raise ValueError("a saved selection needs a name")
    return _write_new(Path(root) / SELECTIONS_DIR, stem, selection.to_json())


def list_selections(root) -> dict[str, Selection]:
    """Saved selections by file stem (name plus a random suffix), oldest first."""
    d = Path(root) / SELECTIONS_DIR
    out: dict[str, Selection] = {}
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.json"), key=lambda p: p.stat().st_mtime):
        try:
            out[p.stem] = Selection.load(p)
        except SelectionError as e:
            log.warning("skipping %s: %s", p.name, e)
    return out
