"""A wheel (what `pip install .` or `pip install git+...` builds) carries the shipped meta-controller.

The file lives in `checkpoints/` (where `train_meta.py` exports it); `metalr/shipped/` links to it, and the package
data copies the file itself into the wheel. Outside a checkout `metalr.load_pretrained()` reads that copy
(`metalr.meta.checkpoint.DEFAULT_PATH`); before, it looked for `checkpoints/` beside site-packages and failed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "metalr_default.safetensors"


def test_the_package_link_is_the_shipped_checkpoint() -> None:
    link = ROOT / "metalr" / "shipped" / "metalr_default.safetensors"
    assert link.is_symlink() and os.path.samefile(link, SHIPPED)  # an export to checkpoints/ is what a wheel carries


def test_a_wheel_carries_the_checkpoint_and_load_pretrained_reads_it_outside_a_checkout(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy of what the build reads, so that the build writes nothing into the repository
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "metalr", src / "metalr", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    (src / "checkpoints").mkdir()
    shutil.copy(SHIPPED, src / "checkpoints" / SHIPPED.name)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("metalr-*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert z.read("metalr/shipped/metalr_default.safetensors") == SHIPPED.read_bytes()
        z.extractall(tmp_path / "site")
    code = (
        "import hashlib, metalr, torch; from metalr.meta.checkpoint import DEFAULT_PATH; "
        "c = metalr.load_pretrained(optimizer=torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1), total_steps=200); "
        "print(metalr.__file__); print(DEFAULT_PATH); print(hashlib.sha256(DEFAULT_PATH.read_bytes()).hexdigest())"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    module, path, digest = run.stdout.split()
    assert module.startswith(str(tmp_path / "site")) and path == str(tmp_path / "site" / "metalr" / "shipped" / SHIPPED.name)
    assert digest == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
