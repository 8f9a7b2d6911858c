"""Atomic writes: a writer killed mid-write (SIGKILL) never leaves a torn file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from metalr.io import atomic_write_bytes, atomic_write_json

# Writes version 2 over version 1 and stops itself (SIGSTOP) at one point of the write, given by argv[2]:
# "created" (empty temp file made), "written" (temp file whole, not yet fsynced), "replacing" (just before
# os.replace), "replaced" (just after). The test then SIGKILLs it there: a kill at a known point, not after a sleep.
WRITER = """
import os, signal, sys, tempfile
from metalr.io import atomic_write_bytes
path, where = sys.argv[1], sys.argv[2]

def stop():
    os.kill(os.getpid(), signal.SIGSTOP)

def stop_before(fn, point):
    return lambda *a, **k: (stop() if where == point else None, fn(*a, **k))[1]

def stop_after(fn, point):
    return lambda *a, **k: (fn(*a, **k), stop() if where == point else None)[0]

tempfile.mkstemp = stop_after(tempfile.mkstemp, "created")  # an empty temp file exists
os.fsync = stop_before(os.fsync, "written")  # the temp file holds every byte (flushed, not yet fsynced)
os.replace = stop_before(stop_after(os.replace, "replaced"), "replacing")
atomic_write_bytes(path, b"2" * 4_000_000)
"""


@pytest.mark.parametrize("where,expected", [("created", b"1"), ("written", b"1"), ("replacing", b"1"), ("replaced", b"2")])
def test_sigkill_during_a_write_leaves_a_whole_file(tmp_path: Path, where: str, expected: bytes) -> None:
    from metalr.testing import wait_until_paused

    target = tmp_path / "ckpt.bin"
    atomic_write_bytes(target, b"1" * 4_000_000)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), where])
    wait_until_paused(proc, timeout=60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == expected * 4_000_000  # the old version until the rename, the new one after: never torn
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ckpt.bin"]
    assert leftovers == ([] if expected == b"2" else [leftovers[0]]) and all(n.endswith(".tmp") for n in leftovers)


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


def test_an_atomic_write_gets_the_mode_a_plain_write_would(tmp_path: Path) -> None:
    """mkstemp's temporary file is private (0600); the written file must not stay so."""
    atomic_write_json(tmp_path / "a.json", {"v": 1})
    (tmp_path / "b.json").write_text("{}")
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == (tmp_path / "b.json").stat().st_mode & 0o777
