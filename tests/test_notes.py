"""Team notes and saved selections in the trace root: concurrent writers never collide."""

import multiprocessing as mp

import pytest

from capture.selection import Selection
from dashboard import notes


def _writer(root, who, n):
    for i in range(n):
        notes.add_note(root, "run-1", f"note {i} from {who}", author=who, tags=["x"])


def test_add_list_delete(tmp_path):
    a = notes.add_note(tmp_path, "run-1", "looks odd at step 3", author="ana", tags=notes.parse_tags("Odd, step3"))
    notes.add_note(tmp_path, "selection:low", "", tags=["keep"])
    assert a.tags == ["odd", "step3"]
    assert [n.text for n in notes.list_notes(tmp_path, "run-1")] == ["looks odd at step 3"]
    assert len(notes.list_notes(tmp_path)) == 2
    assert notes.delete_note(tmp_path, a.id)
    assert notes.list_notes(tmp_path, "run-1") == []
    assert not notes.delete_note(tmp_path, "../../etc/passwd")
    with pytest.raises(ValueError):
        notes.add_note(tmp_path, "run-1", "   ")


def test_a_root_that_cannot_take_a_note_says_so(tmp_path, monkeypatch):
    (tmp_path / notes.NOTES_DIR).write_text("")  # a file where the folder should be
    with pytest.raises(notes.NotSaved, match="cannot be written by this dashboard's user"):
        notes.add_note(tmp_path, "run-1", "x")
    (tmp_path / notes.NOTES_DIR).unlink()

    def read_only(src, dst):  # a root this user may only read: the rename is refused
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(notes.os, "replace", read_only)
    with pytest.raises(notes.NotSaved, match=r"\(Permission denied\)"):
        notes.add_note(tmp_path, "run-1", "x")
    with pytest.raises(notes.NotSaved):
        notes.save_selection(tmp_path, "low", Selection(model="m", layers=["a"], rule="names", statistic="entropy_norm"))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no note, no temporary file left
    assert notes.list_notes(tmp_path) == []


def test_two_writers_at_once(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), who, 40)) for who in ("ana", "ben")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    got = notes.list_notes(tmp_path, "run-1")
    assert len(got) == 80
    assert {n.text for n in got} == {f"note {i} from {w}" for i in range(40) for w in ("ana", "ben")}
    assert not list((tmp_path / notes.NOTES_DIR).glob("*.tmp"))


def test_unreadable_note_skipped(tmp_path):
    notes.add_note(tmp_path, "r", "fine")
    (tmp_path / notes.NOTES_DIR / "broken.json").write_text("{")
    assert [n.text for n in notes.list_notes(tmp_path)] == ["fine"]


def test_saved_selections(tmp_path):
    s = Selection(model="demo", layers=["a", "b"], rule="names:a,b", statistic="entropy_norm")
    notes.save_selection(tmp_path, "low entropy / spatial", s)
    notes.save_selection(tmp_path, "low entropy / spatial", s)  # same name twice: two files
    got = notes.list_selections(tmp_path)
    assert len(got) == 2 and all(k.startswith("low_entropy_spatial-") for k in got)
    assert next(iter(got.values())).layers == ["a", "b"]
