"""Atomic writes: the target appears whole or not at all, and no temporary file is left behind."""
import json
import os
import stat

import pytest

from mobilefacenet_k210 import atomic


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_failure_leaves_neither_temp_nor_target(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic.atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".out.bin.") and tmp.suffix == ".tmp"
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert _names(tmp_path) == []


def test_failure_keeps_the_previous_file(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(ValueError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("new")
            raise ValueError
    assert target.read_text() == "old" and _names(tmp_path) == ["state.json"]


def test_success_replaces_an_existing_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    assert atomic.write_text(target, "new ü") == target
    assert target.read_text(encoding="utf-8") == "new ü" and _names(tmp_path) == ["a.txt"]
    atomic.write_bytes(str(target), b"\x00\x01", sync=True)
    assert target.read_bytes() == b"\x00\x01" and _names(tmp_path) == ["a.txt"]


def test_parent_folder_is_created(tmp_path):
    target = tmp_path / "x" / "y" / "z.bin"
    with atomic.atomic_path(target, suffix=".keras") as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".keras"
        tmp.write_bytes(b"m")
    assert target.read_bytes() == b"m" and _names(target.parent) == ["z.bin"]


def test_written_file_has_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic.write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # as open() gives, not mkstemp's 0600


def test_json_format(tmp_path):
    path = atomic.write_json(tmp_path / "m.json", {"b": 1, "a": "é"})
    assert path.read_text(encoding="utf-8") == '{\n  "a": "é",\n  "b": 1\n}\n'
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": "é", "b": 1}


def test_save_figure_writes_png_and_closes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = atomic.save_figure(fig, tmp_path / "plots" / "p.png", dpi=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number) and _names(path.parent) == ["p.png"]

    fig = plt.figure()
    with pytest.raises(Exception):
        atomic.save_figure(fig, tmp_path / "bad.png", format="no-such-format")
    assert not plt.fignum_exists(fig.number) and not (tmp_path / "bad.png").exists()
    assert _names(tmp_path) == ["plots"]
