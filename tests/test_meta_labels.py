"""LR labels (metalr.meta.labels) and meta-training with them: the band, the penalty, the file, the draw."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from metalr.meta.labels import GRID, band_from_sweep, band_penalty, cosine_shape, labelled_spec, read_labels, write_labels
from metalr.meta.policy import MetaPolicy
from metalr.meta.rule import RuleConfig
from metalr.meta.tasks import USUAL_LR, TaskSpec, materialise
from metalr.meta.trainer import MetaTrainConfig, band_steps, draw_task, meta_step, run_trajectory
from metalr.meta.unroll import start, truncation

MLP = dict(dim=12, classes=3, n=600, noise=0.05, depth=1, width=16, layers=1, act="tanh", norm="none")


def _spec(optimizer: str = "sgdm", steps: int = 40, data: str = "teacher") -> TaskSpec:
    return TaskSpec(data, "mlp", optimizer, USUAL_LR[optimizer], 0.0, 32, steps, 3, dict(MLP))


def _file(tmp_path: Path, entries: list[dict[str, object]] | None = None) -> Path:
    path = tmp_path / "labels.json"
    if entries is None:
        entries = [{"index": 0, "spec": _spec().to_dict(), "grid": list(GRID), "acc": [0.1] * len(GRID), "band": [0.5, 1.0]}]
    write_labels(path, entries)
    return path


def test_band_is_the_near_best_range_widened_by_half_a_step() -> None:
    assert band_from_sweep([-1.0, 0.0, 1.0], [0.5, 0.9, 0.895]) == (-0.5, 1.5)
    assert band_from_sweep([-1.0, -0.5, 0.0], [0.9, 0.5, 0.2]) == (-1.25, -0.75)
    assert band_from_sweep([-1.0, 0.0, 1.0], [0.5, 0.9, 0.85], tol=0.1) == (-0.5, 1.5)
    with pytest.raises(ValueError, match="at least 2 points"):
        band_from_sweep([0.0], [0.5])


def test_band_penalty_is_zero_inside_follows_the_cosine_and_pulls_toward_the_band() -> None:
    band = (math.log(2.0), math.log(4.0))
    assert float(band_penalty(torch.tensor(math.log(3.0), dtype=torch.float64), band, 0, 100)) == 0.0
    # half-way through a cosine the band is half as high: log 3 is above it, log 1.5 inside it
    assert float(band_penalty(torch.tensor(math.log(3.0), dtype=torch.float64), band, 50, 100)) > 0.0
    assert float(band_penalty(torch.tensor(math.log(1.5), dtype=torch.float64), band, 50, 100)) == 0.0
    assert cosine_shape(100, 100) == 0.05 and cosine_shape(0, 100) == 1.0
    for value, sign in ((0.0, -1.0), (3.0, 1.0)):  # below the band: descent raises the LR; above: lowers it
        x = torch.tensor(value, dtype=torch.float64, requires_grad=True)
        band_penalty(x, band, 0, 100).backward()
        assert float(x.grad) * sign > 0


def test_label_file_round_trip_and_refusals(tmp_path: Path) -> None:
    path = _file(tmp_path)
    entries = read_labels(path)
    assert entries[0]["band"] == [0.5, 1.0]
    data = json.loads(path.read_text())
    data["tasks"][0]["band"] = [1.0, 0.5]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not an LR-label file"):
        read_labels(path)
    path.write_text("{}")
    with pytest.raises(ValueError, match="not an LR-label file"):
        read_labels(path)
    with pytest.raises(ValueError, match="not an LR-label file"):
        read_labels(tmp_path / "missing.json")


def test_labelled_spec_puts_the_band_relative_to_the_drawn_base_lr() -> None:
    entry = {"spec": _spec("adam").to_dict(), "band": [0.5, 1.0]}
    spec, band = labelled_spec(entry, -1.0)
    assert spec.lr == pytest.approx(USUAL_LR["adam"] * 0.1)
    assert band == pytest.approx((1.5 * math.log(10), 2.0 * math.log(10)))


def test_config_with_labels_draws_labelled_tasks_and_refuses_bad_settings(tmp_path: Path) -> None:
    path = _file(tmp_path)
    cfg = MetaTrainConfig(lr_labels=str(path), label_weight=1.0, meta_batch=4, truncation=10, val_every=5, steps_range=[20, 40], progress=False)
    draws = [draw_task(cfg, 3, i) for i in range(4)]
    assert draws == [draw_task(cfg, 3, i) for i in range(4)]  # a function of (seed, step, index)
    for spec, band in draws:
        base = math.log10(spec.lr / USUAL_LR["sgdm"])
        assert -1.5 <= base <= 1.5 and spec.steps == 40
        assert band == pytest.approx(((0.5 - base) * math.log(10), (1.0 - base) * math.log(10)))
    assert len({s.lr for s, _ in draws}) == 4
    with pytest.raises(ValueError, match="label_weight"):
        MetaTrainConfig(label_weight=1.0)
    with pytest.raises(ValueError, match="label_window"):
        MetaTrainConfig(label_window=[0.9, 0.1])
    with pytest.raises(ValueError, match="not an LR-label file"):
        MetaTrainConfig(lr_labels=str(tmp_path / "nope.json"))
    digits = _file(tmp_path, [{"index": 0, "spec": _spec(data="digits").to_dict(), "grid": list(GRID), "acc": [0.1] * 7, "band": [0.0, 0.5]}])
    with pytest.raises(ValueError, match="held out"):
        MetaTrainConfig(lr_labels=str(digits), held_out=["digits_mlp"])
    assert band_steps(100, [0.1, 0.9]) == 81


def test_band_penalty_steers_the_policy_toward_the_labelled_level(tmp_path: Path) -> None:
    """With the penalty dominating, the meta-gradient on the output bias raises the LR for a high band, lowers it for a low one."""
    spec = _spec("sgd", 40)
    cfg = MetaTrainConfig(lr_labels=str(_file(tmp_path)), label_weight=100.0, truncation=10, val_every=5, steps_range=[20, 40], credit=False, progress=False)
    signs = []
    for band in ((3.0, 4.0), (-4.0, -3.0)):
        torch.manual_seed(0)
        pol = MetaPolicy()
        run_trajectory(start(materialise(spec), 64), pol, RuleConfig(), cfg, norm=1.0, band=band, band_norm=float(band_steps(40, cfg.label_window)))
        signs.append(float(pol.net[-1].bias.grad))
    assert signs[0] < 0 < signs[1], signs  # gradient descent: up for the high band, down for the low one
    res = truncation(start(materialise(spec), 64), MetaPolicy(), RuleConfig(), 40, 5, band=(3.0, 4.0))
    assert res.band_terms == band_steps(40, (0.1, 0.9)) and float(res.band_loss.detach()) > 0


def test_meta_step_with_labels_reports_the_band_penalty(tmp_path: Path) -> None:
    cfg = MetaTrainConfig(
        lr_labels=str(_file(tmp_path)), label_weight=1.0, meta_batch=2, truncation=10, val_every=5, val_batch=64, steps_range=[20, 40], progress=False
    )
    torch.manual_seed(0)
    policy = MetaPolicy()
    stats = meta_step(policy, torch.optim.Adam(policy.parameters(), lr=1e-3), cfg, 0)
    assert math.isfinite(stats["meta_loss"]) and stats["band_penalty"] >= 0.0 and stats["inner_steps"] == 80


def test_resume_refuses_changed_label_contents(tmp_path: Path) -> None:
    from metalr.meta.trainer import train

    path = _file(tmp_path)
    cfg = MetaTrainConfig(
        lr_labels=str(path), label_weight=1.0, meta_batch=1, meta_steps=1, truncation=10, val_every=5, val_batch=64,
        steps_range=[20, 40], progress=False, validate_every=0, out_dir=str(tmp_path / "run"),
    )  # fmt: skip
    train(cfg)
    write_labels(path, [{"index": 0, "spec": _spec().to_dict(), "grid": list(GRID), "acc": [0.1] * 7, "band": [0.0, 1.0]}])
    with pytest.raises(ValueError, match="contents of lr_labels"):
        train(MetaTrainConfig(**{**cfg.__dict__, "meta_steps": 2}), resume=True)


def _probe_script() -> Any:
    """scripts/meta_level_probe.py as a module (scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("meta_level_probe", Path(__file__).resolve().parents[1] / "scripts" / "meta_level_probe.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_level_probe_reads_the_deployed_features_and_a_faster_lr_moves_the_weights_more() -> None:
    probe = _probe_script()
    entry = {"index": 7, "spec": _spec("sgdm", steps=200).to_dict(), "grid": list(GRID), "acc": [0.5] * len(GRID), "band": [0.25, 0.75]}
    slow, fast = probe.probe(entry, -1.5, 0.15), probe.probe(entry, 0.75, 0.15)
    for r in (slow, fast):
        assert r["index"] == 7 and r["band"] == [0.25, 0.75] and not r["diverged"]
        assert r["steps"] == 30  # 15 % of 200 is under the 30-step minimum
        assert len(r["features"]) == len(probe.OBSERVED) and all(math.isfinite(v) for v in r["features"])
        assert -1.0 <= r["hypergrad_cos"] <= 1.0
    i = probe.OBSERVED.index("update_size")
    assert fast["features"][i] > slow["features"][i] + 1.0  # 10**2.25 x the LR: over a decade more movement per step


def test_level_probe_reads_a_sweep_linearly_between_grid_points_and_flat_beyond() -> None:
    probe = _probe_script()
    entry = {"grid": [-1.0, 0.0, 1.0], "acc": [0.2, 0.6, 0.4]}
    assert probe.acc_at(entry, -0.5) == pytest.approx(0.4)
    assert probe.acc_at(entry, 0.25) == pytest.approx(0.55)
    assert probe.acc_at(entry, -3.0) == pytest.approx(0.2) and probe.acc_at(entry, 2.0) == pytest.approx(0.4)


def test_the_selection_rule_needs_a_mean_gain_and_no_cell_much_worse() -> None:
    """scripts/meta_select.py's rule, fixed before the candidates it chose between: +MIN_GAIN on average over
    the rule's cells (v1: 9, v2: 12), and no cell more than MAX_LOSS below the reference."""
    import importlib.util
    import sys

    scripts = Path(__file__).resolve().parents[1] / "scripts"
    sys.path.insert(0, str(scripts))  # meta_select imports its sibling scripts
    try:
        spec = importlib.util.spec_from_file_location("meta_select", scripts / "meta_select.py")
        assert spec is not None and spec.loader is not None
        sel = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sel)
    finally:
        sys.path.remove(str(scripts))
    assert sel.RULES["v1"] == sel.CELLS and len(sel.CELLS) == 9 and sel.RULES["v2"][:9] == sel.CELLS  # v2 = v1 + real text
    for cells in sel.RULES.values():
        ref = {c: 0.5 for c in cells}
        gain = 2 * sel.MIN_GAIN * len(cells)  # one cell carries the whole gain: mean 2 x MIN_GAIN
        assert sel.beats({**ref, "dev10": 0.5 + gain}, ref, cells)[0]
        assert not sel.beats({**ref, "dev10": 0.5 + gain / 4}, ref, cells)[0]  # mean gain under MIN_GAIN
        ok, mean, why = sel.beats({**ref, "dev10": 0.5 + gain, "rnn10": 0.5 - 2 * sel.MAX_LOSS}, ref, cells)
        assert not ok and mean > sel.MIN_GAIN and "rnn10" in why  # a large mean gain does not buy a worse cell
        assert sel.beats({**ref, "dev10": 0.5 + gain, "rnn10": 0.5 - sel.MAX_LOSS / 2}, ref, cells)[0]
    v2 = sel.RULES["v2"]
    ref = {c: 0.5 for c in v2}
    ok, _, why = sel.beats({**ref, "dev10": 0.6, "txt31.6": 0.5 - 2 * sel.MAX_LOSS}, ref, v2)
    assert not ok and "txt31.6" in why  # v2's real-text cells count
    assert sel.beats({**ref, "dev10": 0.6, "txt31.6": 0.5 - 2 * sel.MAX_LOSS}, ref, sel.CELLS)[0]  # v1 ignores them
