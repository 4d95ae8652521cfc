"""Atomic writes."""
import os
import stat

import pytest

from autosam.utils.files import atomic_path, read_json, write_json


def test_atomic_write_replaces_and_uses_umask_permissions(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"x": 1})
    write_json(target, {"x": 2})
    assert read_json(target) == {"x": 2}
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_failed_write_keeps_old_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "b.json"
    write_json(target, {"ok": True})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert read_json(target) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["b.json"]
