"""The README's plain-PyTorch example runs, and is the file examples/plain_pytorch.py verbatim.

The README shows the snippet in a ```python block right after a line naming
`examples/plain_pytorch.py`; this test fails if the two drift apart.
"""

from __future__ import annotations

import math
import re
import runpy
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plain_pytorch.py"
COSINE_LINE = 'ctrl = metalr.hook("cosine", opt, total_steps=200)\n'
PRETRAINED_LINE = '# ctrl = metalr.hook("pretrained", opt, total_steps=200)  # the pretrained meta-controller instead\n'


def _run(code: str, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    torch.manual_seed(0)
    path = tmp_path / "example.py"
    path.write_text(code)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return runpy.run_path(str(path))
    finally:
        torch.set_num_threads(n)


def test_example_trains_with_cosine(tmp_path: Path) -> None:
    code = EXAMPLE.read_text()
    assert COSINE_LINE in code and PRETRAINED_LINE in code
    assert len([line for line in code.splitlines() if line.strip()]) <= 15
    assert code.count("ctrl.") == 1  # the loop's one added line
    env = _run(code, tmp_path)
    ctrl, loss = env["ctrl"], env["loss"].item()
    assert ctrl.last_step == 200 and ctrl.get_last_lr()[0] == pytest.approx(0.0, abs=1e-8)  # cosine reached its end
    assert loss < 0.2, loss  # from ~0.69 at chance


def test_example_with_pretrained_controller(tmp_path: Path) -> None:
    code = EXAMPLE.read_text().replace(COSINE_LINE, "").replace(PRETRAINED_LINE, PRETRAINED_LINE[2:].split("  #")[0] + "\n")
    env = _run(code, tmp_path)
    lrs = env["ctrl"].get_last_lr()
    assert all(math.isfinite(lr) and lr > 0 for lr in lrs)
    assert math.isfinite(env["loss"].item()) and env["loss"].item() < 0.69


def test_readme_snippet_is_the_example_file() -> None:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"examples/plain_pytorch\.py[^\n]*\n+```python\n(.*?)```", text, re.S)
    assert match is not None, "README.md lacks the plain-PyTorch snippet (a ```python block after a line naming examples/plain_pytorch.py)"
    assert match.group(1).strip() == EXAMPLE.read_text().strip(), "README snippet and examples/plain_pytorch.py differ"
