"""The published figures are what the code produces.

- Every README table between `<!-- results:... -->` markers equals what the committed
  results (docs/results/<name>/results.json) generate: a hand edit fails here.
- The committed results used the shipped meta checkpoint (sha256) and the committed configs.
Fix a failure with `make results` (re-run and re-publish) or, when only a README was edited,
`python scripts/publish_results.py` (rewrite the tables from docs/results).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from metalr.config import load_config, to_dict
from metalr.evaluation import evaluate, publish
from metalr.evaluation.config import EvalConfig
from metalr.evaluation.pipeline import sha256_file
from metalr.meta.checkpoint import DEFAULT_PATH

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted(p.parent.name for p in (ROOT / "docs" / "results").glob("*/results.json"))


@pytest.mark.parametrize("readme", publish.READMES)
def test_readme_tables_match_the_committed_results(readme: str) -> None:
    text = (ROOT / readme).read_text()
    stale = publish.stale_blocks(text)
    assert not stale, f"{readme}: {stale} differ from docs/results/; run `python scripts/publish_results.py` (or `make results` to re-run them)"


def test_the_readme_cites_published_configs() -> None:
    blocks = [m["name"] for f in publish.READMES for m in publish.BLOCK.finditer((ROOT / f).read_text())]
    assert blocks, "README.md has no generated result tables"
    assert set(blocks) <= set(publish.PUBLISHED), f"a README block names an unpublished config: {sorted(set(blocks) - set(publish.PUBLISHED))}"


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_results_used_the_shipped_checkpoint(name: str) -> None:
    results = json.loads((ROOT / "docs" / "results" / name / "results.json").read_text())
    if any((s if isinstance(s, str) else s["name"]) == "meta" for s in results["config"]["strategies"]):
        assert results.get("meta_checkpoints"), f"docs/results/{name} ran `meta` but holds no checkpoint stamp"
    assert not publish.checkpoint_mismatches(results, sha256_file(DEFAULT_PATH)), (
        f"docs/results/{name} ran with another meta checkpoint than the shipped one: run `make results` after changing the checkpoint"
    )


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_results_come_from_the_committed_config(name: str) -> None:
    assert name in publish.PUBLISHED
    results = json.loads((ROOT / "docs" / "results" / name / "results.json").read_text())
    publish.check_publishable(name, results)  # source file, overrides, config unchanged since, no failed run
    assert {"torch", "metalr", "python"} <= set(results["versions"])


def test_committed_results_are_small() -> None:
    size = sum(p.stat().st_size for p in (ROOT / "docs" / "results").rglob("*") if p.is_file())
    # ~1.1 MB of tables and plots, plus eval_full's ~1,500 run records (~0.12 MB) that make a new checkpoint cheap to publish
    assert size < 1_400_000, f"docs/results/ holds {size / 1e6:.2f} MB; keep it near 1 MB (strip more in publish.strip)"


def test_a_hand_edited_readme_figure_is_caught() -> None:
    """Change one digit inside a generated table of the real README: the check reports that block."""
    text = (ROOT / "README.md").read_text()
    tables = [m for m in publish.BLOCK.finditer(text) if "|---" in m["body"]]
    if not tables:
        pytest.skip("no committed results yet (make results); tests/test_published_results.py::test_publish_end_to_end covers the check")
    _assert_edit_caught(text, tables[0], ROOT / "docs" / "results")


def _assert_edit_caught(text: str, m: re.Match[str], results_dir: Path) -> None:
    body = m["body"]
    i = next(i for i, ch in enumerate(body) if ch.isdigit() and body.rfind("|", 0, i) > body.find("|---"))
    edited = text[: m.start("body") + i] + str((int(body[i]) + 1) % 10) + text[m.start("body") + i + 1 :]
    assert publish.stale_blocks(edited, results_dir) == [m.group(1).strip()]
    assert publish.update_text(edited, results_dir) == text  # and regenerating undoes the edit


def test_publish_end_to_end(tmp_path: Path) -> None:
    """A real (tiny) evaluation of a config, published into a scratch repo: stamped, small, rendered into a
    README block; a hand edit of a figure and a checkpoint other than the shipped one are both caught."""
    (tmp_path / "configs").mkdir()
    cfg = "tasks: [digits_mlp]\nstrategies: [constant, meta]\nseeds: [0]\nsteps: 20\neval_every: 10\ntuned: {n_lrs: 2}\n"
    cfg += "sensitivity: {enabled: true, multipliers: [0.1, 1.0], strategies: [constant]}\nworkers: 1\nout_dir: out/tiny\ntensorboard: false\n"
    (tmp_path / "configs" / "tiny.yaml").write_text(cfg)
    config = load_config(EvalConfig, tmp_path / "configs" / "tiny.yaml", [f"out_dir={tmp_path / 'out' / 'tiny'}"])
    evaluate(config, progress=False, source={"config": "configs/tiny.yaml", "overrides": [f"out_dir={tmp_path / 'out' / 'tiny'}"]})
    dest = publish.publish("tiny", tmp_path / "out" / "tiny", root=tmp_path)
    published = json.loads((dest / "results.json").read_text())
    assert "runs" not in published and published["meta_checkpoints"]["meta"]["sha256"] == sha256_file(DEFAULT_PATH)
    assert {"torch", "metalr"} <= set(published["versions"]) and (dest / "sensitivity_digits_mlp.png").exists()
    assert not publish.checkpoint_mismatches(published, sha256_file(DEFAULT_PATH))
    assert publish.checkpoint_mismatches(published, "0" * 64) == ["meta"]
    _assert_published_runs_resume(tmp_path, config, published)
    _assert_stash_carries_unfinished_runs(tmp_path)
    readme = "# x\n<!-- results:tiny rows strategies=constant,meta,tuned cols=final_val_accuracy,steps_to_target -->\n<!-- /results -->\n"
    readme += "<!-- results:tiny sensitivity -->\n<!-- /results -->\n"
    readme = publish.update_text(readme, tmp_path / "docs" / "results")
    assert "| digits_mlp | meta |" in readme and "| digits_mlp | cosine (tuned) |" in readme and "| constant | task LR |" in readme
    assert not publish.stale_blocks(readme, tmp_path / "docs" / "results")
    _assert_edit_caught(readme, next(publish.BLOCK.finditer(readme)), tmp_path / "docs" / "results")


def _assert_published_runs_resume(root: Path, config: EvalConfig, published: dict[str, Any]) -> None:
    """The published run records, copied into a fresh out_dir, are reused as they are; a record whose spec
    no longer matches (as a new meta checkpoint makes the meta runs' specs) is trained again, alone."""
    runs = publish.read_runs(root / "docs" / "results" / "tiny" / publish.RUNS_FILE)
    assert runs and all("history" not in r and r["status"] == "ok" for r in runs)
    fresh = root / "out" / "fresh"
    assert publish.seed_out_dir("tiny", fresh, root=root) == len({r["id"] for r in runs})
    assert publish.seed_out_dir("tiny", fresh, root=root) == 0  # never overwrites a saved run
    stale = fresh / "runs" / "digits_mlp__meta__0.json"
    record = json.loads(stale.read_text())
    record["spec"]["weights_sha256"] = "0" * 64  # as if made with other weights
    stale.write_text(json.dumps(record))
    again = evaluate(replace(config, out_dir=str(fresh)), progress=False)
    assert again["counts"]["executed"] == 1 and again["counts"]["reused"] == len(again["runs"]) - 1
    before = json.loads((root / "out" / "tiny" / "results.json").read_text())["aggregate"]
    assert _untimed(again["aggregate"]) == _untimed(before)  # the retrained run trains as before; only its clock differs


def _assert_stash_carries_unfinished_runs(root: Path) -> None:
    """An unfinished regeneration's finished runs, stashed in docs/results, seed a fresh out_dir before the
    published records do (so a long --run survives a new checkout); the next publish removes the stash."""
    out = root / "out" / "half"
    (out / "runs").mkdir(parents=True)
    src = json.loads((root / "out" / "tiny" / "runs" / "digits_mlp__meta__0.json").read_text())
    src["metrics"]["final_val_accuracy"] = 0.123  # tells the stashed record from the published one
    (out / "runs" / "digits_mlp__meta__0.json").write_text(json.dumps(src))
    (out / "runs" / "digits_mlp__constant__0.json").write_text('{"id": "digits_mlp__constant__0", "status": "error"}')
    assert publish.stash_runs("tiny", out, root=root) == 1  # the failed run is not carried
    pending = root / "docs" / "results" / "tiny" / publish.PENDING_FILE
    (stashed,) = publish.read_runs(pending)
    assert stashed["metrics"]["final_val_accuracy"] == 0.123 and "history" not in stashed
    fresh = root / "out" / "after_checkout"
    n_published = len({r["id"] for r in publish.read_runs(root / "docs" / "results" / "tiny" / publish.RUNS_FILE)})
    assert publish.seed_out_dir("tiny", fresh, root=root) == n_published
    seeded = json.loads((fresh / "runs" / "digits_mlp__meta__0.json").read_text())
    assert seeded["metrics"]["final_val_accuracy"] == 0.123 and seeded["seeded_from"].endswith(publish.PENDING_FILE)
    publish.publish("tiny", root / "out" / "tiny", root=root)
    assert not pending.exists()


def _untimed(agg: dict[str, Any]) -> dict[str, Any]:
    timed = {"wall_time", "ms_per_step", "peak_memory_mb", "time_to_target"}
    return {(t, label): {k: v for k, v in cell["metrics"].items() if k not in timed} for t, cells in agg.items() for label, cell in cells.items()}


def _results(**kw: Any) -> dict[str, Any]:
    cfg = to_dict(load_config(EvalConfig, ROOT / "configs" / "heuristics.yaml", ["validate_build=false"]))
    base = {"source": {"config": "configs/heuristics.yaml", "overrides": ["workers=4"]}, "config": cfg, "counts": {"errors": 0}}
    return {**base, **kw}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"source": {"config": "configs/other.yaml", "overrides": []}}, "not 'configs/heuristics.yaml'"),
        ({"source": {"config": "configs/heuristics.yaml", "overrides": ["seeds=[0]"]}}, "override(s) of ['seeds']"),
        ({"counts": {"errors": 2}}, "2 run(s) failed"),
    ],
)
def test_publish_refuses_results_not_made_by_the_committed_config(change: dict[str, Any], message: str) -> None:
    publish.check_publishable("heuristics", _results())  # execution overrides (workers) are fine
    with pytest.raises(publish.PublishError) as err:
        publish.check_publishable("heuristics", _results(**change))
    assert message in str(err.value)
    stale = _results()
    stale["config"] = copy.deepcopy(stale["config"]) | {"seeds": [0]}
    with pytest.raises(publish.PublishError, match="changed since"):
        publish.check_publishable("heuristics", stale)


def test_render_without_results_says_how_to_make_them(tmp_path: Path) -> None:
    text = "a\n<!-- results:eval_full summary -->\nold\n<!-- /results -->\nb\n"
    new = publish.update_text(text, tmp_path)
    assert "No committed results for `eval_full` yet" in new and new.startswith("a\n") and new.endswith("<!-- /results -->\nb\n")
    assert publish.update_text(new, tmp_path) == new
    with pytest.raises(ValueError, match="complete blocks"):
        publish.stale_blocks(text.replace("<!-- /results -->", ""), tmp_path)
