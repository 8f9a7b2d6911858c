"""Atomic writes: a writer killed mid-write (SIGKILL) never leaves a torn file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metalr.io import atomic_write_bytes, atomic_write_json

WRITER = """
import sys
from metalr.io import atomic_write_bytes
path = sys.argv[1]
i = 0
while True:
    i += 1
    block = (str(i % 10) * 1_000_000).encode()   # 1 MB of one digit: a torn file would mix digits or be short
    atomic_write_bytes(path, block * 4)
"""


def _is_whole(data: bytes) -> bool:
    return len(data) == 4_000_000 and len(set(data)) == 1


def test_sigkill_during_writes_leaves_a_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.bin"
    atomic_write_bytes(target, b"7" * 4_000_000)
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)])
        time.sleep(delay + 0.3)  # let the interpreter start and write a few versions
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _is_whole(target.read_bytes())
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ckpt.bin"]
    assert all(name.endswith(".tmp") for name in leftovers)  # only temp files of killed writes


def test_failed_write_keeps_previous_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "results.json"
    atomic_write_json(target, {"v": 1})

    def boom(*a: object, **k: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # the temp file was cleaned up
