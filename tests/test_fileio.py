"""Atomic writes: all or nothing, and the file mode the umask allows (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat

import pytest

from saekit.fileio import atomic_write_bytes, atomic_write_text


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_mode_the_umask_allows(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with open(tmp_path / "plain.txt", "w") as fh:  # what a plain open gives
            fh.write("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def broken(tmp):
        open(tmp, "wb").write(b"half")
        raise RuntimeError("disk gone")

    from saekit.fileio import atomic_write

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]
