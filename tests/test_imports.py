"""The metalr package's import graph has no cycle and no upward import (scripts/check_imports.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_imports", ROOT / "scripts" / "check_imports.py")
assert _spec is not None and _spec.loader is not None
check_imports = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_imports)


def test_metalr_has_no_import_cycle_and_no_upward_import() -> None:
    assert check_imports.problems() == []


def test_the_check_finds_cycles_upward_imports_and_unplaced_modules(tmp_path: Path) -> None:
    pkg = tmp_path / "metalr"
    (pkg / "controllers").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "io.py").write_text("import metalr\n")  # layer 0 imports the top package
    (pkg / "signals.py").write_text("def f():\n    from metalr.controllers import base\n")  # lazy, still upward
    (pkg / "controllers" / "__init__.py").write_text("from .base import X\n")
    (pkg / "controllers" / "base.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import metalr.train\nfrom metalr.controllers import other\n"
    )
    (pkg / "controllers" / "other.py").write_text("from metalr.controllers.base import X\n")
    (pkg / "newthing.py").write_text("")
    found = check_imports.problems(tmp_path)
    assert "import cycle: metalr.controllers.base <-> metalr.controllers.other" in found
    assert any(p.startswith("upward import: metalr.io ") for p in found)
    assert any(p.startswith("upward import: metalr.signals ") and p.endswith("metalr.controllers.base (layer 4)") for p in found)
    assert "no layer: metalr.newthing is in no entry of LAYERS" in found
    assert not any("metalr.train" in p for p in found)  # TYPE_CHECKING imports never run
