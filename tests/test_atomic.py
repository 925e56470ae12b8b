"""Crash-safe writes: the old file survives a failed write, and no temp file is left behind."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from adactrl.atomic import RunFileError, atomic_path, write_text


def test_atomic_writes_leave_the_old_file_and_no_temp_file_on_a_full_disk(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_text(path, "old")

    def full(self, data, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(RunFileError, match=f"cannot write {path}: no space left on the device .* MiB free"):
        write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_an_exception_inside_the_block_keeps_the_old_file(tmp_path):
    path = tmp_path / "history.csv"
    write_text(path, "old")
    with pytest.raises(KeyError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise KeyError("writer bug")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["history.csv"]


def test_a_missing_folder_names_the_file(tmp_path):
    path = tmp_path / "gone" / "x.txt"  # root ignores permission bits, so a missing folder stands in
    with pytest.raises(RunFileError, match=f"cannot write {path}"):
        write_text(path, "data")
