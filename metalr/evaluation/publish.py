"""Published results: what the README cites, committed under `docs/results/<name>/`, and the
README tables written from them.

    python scripts/publish_results.py --run      # = make results: evaluate every published config, publish, rewrite the READMEs
    python scripts/publish_results.py            # only rewrite the README tables from docs/results
    python scripts/publish_results.py --check    # exit 1 if a README table differs from docs/results

A published result is `configs/<name>.yaml` evaluated by `evaluate.py` (with no override
other than how it runs: workers, backend ...), copied from its `out_dir` as

    docs/results/<name>/results.json    the results without per-run records and curves (small),
                                        stamped with the meta checkpoint's sha256 and library versions
    docs/results/<name>/results.md      the full report, as evaluate.py wrote it
    docs/results/<name>/sensitivity_<task>.png   the LR-sensitivity plots, when the config sweeps
    docs/results/<name>/runs.jsonl.gz   every run's record (spec, status, metrics; no curves), one per line
    docs/results/<name>/pending.jsonl.gz  only while a regeneration is under way (`--stash`): the records
                                        it has finished so far; not published, removed by the next publish

The run records make a published grid cheap to bring up to date: `make results` first copies them
into the config's out_dir (`seed_out_dir`), and the evaluation's resume then trains only the runs
whose spec changed. A new meta checkpoint changes only the `meta` runs' spec (the weights' sha256),
so only they are trained again, instead of the whole grid. A regeneration longer than a session
(eval_full: ~7 h on 2 CPU cores) is carried across checkouts the same way: `publish_results.py
--stash NAME` commits the records finished so far as pending.jsonl.gz, and the next `--run` seeds
them first. Seeded records carry no history, so the
per-task curve plots of an out_dir leave their runs out; everything published is computed from
the records alone.

A README table lives between `<!-- results:NAME VIEW [key=value ...] -->` and `<!-- /results -->`;
everything between the markers is generated, so a hand edit is caught by the tests
(tests/test_published_results.py) and undone by the next `make results`. Views:

    summary       strategies x tasks: headline metric and steps to target (the tuned row last)
    rows          one row per task x strategy; cols=KEY,... (aggregate keys; KEY/LABEL = ratio
                  to LABEL's row), strategies=LABEL,... (`tuned` = the tuned reference's row)
    sensitivity   the robustness score of every swept strategy
"""

from __future__ import annotations

import gzip
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

from metalr.config import load_config, to_dict
from metalr.evaluation.config import EvalConfig
from metalr.evaluation.grid import format_duration
from metalr.evaluation.report import EFFICIENCY, QUALITY, TARGET_KEYS, TUNED_SUFFIX, _best_rows, _fmt, mean_of
from metalr.io import atomic_write_bytes, atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "docs" / "results"
#: The configs whose results the READMEs cite, in the order `make results` runs them.
PUBLISHED = ("heuristics", "baselines", "meta_heldout", "task_suite", "eval_full")
#: READMEs whose marker blocks are generated.
READMES = ("README.md", "benchmarks/README.md")
#: Config keys that say how an evaluation runs, not what it computes: overridable when publishing.
EXECUTION_KEYS = frozenset({"workers", "out_dir", "resume", "reuse_from", "tensorboard", "plots", "backend", "ray_address", "validate_build"})
BLOCK = re.compile(r"^(<!-- results:(?P<name>[A-Za-z0-9_.-]+) (?P<view>[a-z_]+)(?P<args>[^>]*?) -->\n)(?P<body>.*?)(?P<close><!-- /results -->)", re.S | re.M)
OPEN = re.compile(r"^<!-- results:", re.M)  # a marker starts a line; prose may quote one
#: The published run records of a config, beside its results.json.
RUNS_FILE = "runs.jsonl.gz"
#: The records of an unfinished regeneration (`stash_runs`), seeded before the published ones.
PENDING_FILE = "pending.jsonl.gz"
HEADERS = {**dict(QUALITY), **dict(EFFICIENCY), "steps_run": "steps", "last_lr": "last LR", "best_val_accuracy": "acc (best)"}


class PublishError(RuntimeError):
    """Results that must not be published as they are (from another config, failed runs ...)."""


# ------------------------------------------------------------------ publishing
def check_publishable(name: str, results: dict[str, Any], root: Path = ROOT) -> None:
    """Raise unless `results` come from `configs/<name>.yaml` as committed, with every run finished."""
    config_file = f"configs/{name}.yaml"
    source = results.get("source") or {}
    if source.get("config") != config_file:
        raise PublishError(f"{name}: results were made from {source.get('config')!r}, not {config_file!r}: run `python evaluate.py --config {config_file}`")
    keys = {o.partition("=")[0].strip().split(".")[0] for o in source.get("overrides") or []}
    if keys - EXECUTION_KEYS:
        raise PublishError(f"{name}: made with override(s) of {sorted(keys - EXECUTION_KEYS)}; published results use the committed config as is")
    diff = config_diff(results["config"], to_dict(load_config(EvalConfig, root / config_file, [])))
    if diff:
        raise PublishError(f"{name}: {config_file} changed since these results were made ({', '.join(diff)}): evaluate it again")
    if results["counts"]["errors"]:
        raise PublishError(f"{name}: {results['counts']['errors']} run(s) failed; fix them and evaluate again (finished runs are reused)")


def checkpoint_mismatches(results: dict[str, Any], shipped_sha256: str) -> list[str]:
    """Labels of the `meta` strategies in `results` that ran with a checkpoint other than `shipped_sha256`."""
    return [label for label, c in (results.get("meta_checkpoints") or {}).items() if c["sha256"] != shipped_sha256]


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys (other than EXECUTION_KEYS) whose values differ between two resolved configs."""
    keys = (set(a) | set(b)) - EXECUTION_KEYS
    return sorted(k for k in keys if json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True))


def strip(results: dict[str, Any]) -> dict[str, Any]:
    """The committed form: aggregates of the main rows and the tuned reference's best row, the
    tuned reference, Δ, profile scores, the sensitivity sweep, config, stamps. No per-run
    records or curves (they stay in the evaluation's out_dir); floats to 6 significant digits."""
    out = {k: v for k, v in results.items() if k not in ("runs", "aggregate", "profile")}
    tuned = results.get("tuned_reference") or {}
    out["aggregate"] = {
        task: {label: cell for label, cell in cells.items() if cell["group"] == "main" or label == tuned.get(task, {}).get("best_label")}
        for task, cells in results["aggregate"].items()
    }
    out["profile"] = {name: {"score": p["score"]} for name, p in (results.get("profile") or {}).items()}
    return _round(out)


def _round(obj: Any) -> Any:
    if isinstance(obj, float):
        return float(f"{obj:.6g}") if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    return obj


def eval_out_dir(name: str, out_dir: str | Path | None = None, root: Path = ROOT) -> Path:
    """`out_dir`, or else the out_dir of `configs/<name>.yaml`, as a path (a relative one is relative to `root`)."""
    if out_dir is None:
        out_dir = load_config(EvalConfig, root / "configs" / f"{name}.yaml", ["validate_build=false"]).out_dir
    return Path(out_dir) if Path(out_dir).is_absolute() else root / out_dir


def publish(name: str, out_dir: str | Path | None = None, root: Path = ROOT) -> Path:
    """Copy the evaluation of `configs/<name>.yaml` (from its out_dir) into docs/results/<name>/."""
    src = eval_out_dir(name, out_dir, root)
    results = json.loads((src / "results.json").read_text())
    check_publishable(name, results, root)
    dest = root / "docs" / "results" / name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    atomic_write_json(dest / "results.json", strip(results))
    write_runs(dest / RUNS_FILE, results["runs"])
    atomic_write_text(dest / "results.md", (src / "results.md").read_text())
    for png in sorted((src / "plots").glob("sensitivity_*.png")):
        _small_png(png, dest / png.name)
    return dest


def write_runs(path: Path, runs: list[dict[str, Any]]) -> None:
    """The run records as gzipped JSON lines (no timestamp in the gzip header: the same records give the same bytes)."""
    lines = "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in runs)
    atomic_write_bytes(path, gzip.compress(lines.encode("utf-8"), compresslevel=9, mtime=0))


def read_runs(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode("utf-8").splitlines() if line]


def seed_out_dir(name: str, out_dir: str | Path | None = None, root: Path = ROOT) -> int:
    """Copy the run records of `name` into its evaluation's `out_dir/runs/`, where none is saved yet:
    first the pending ones of an unfinished regeneration (`stash_runs`), then the published ones.

    The evaluation then resumes from them: a record whose spec still matches is reused, any other
    run (a changed spec, e.g. `meta` with new weights) is trained. Returns how many records were written.
    """
    runs_dir = eval_out_dir(name, out_dir, root) / "runs"
    written = 0
    for file in (PENDING_FILE, RUNS_FILE):
        src = root / "docs" / "results" / name / file
        if not src.exists():
            continue
        for rec in read_runs(src):
            path = runs_dir / f"{rec['id']}.json"
            if rec.get("status") == "error" or path.exists():
                continue
            atomic_write_json(path, {**rec, "history": None, "seeded_from": f"docs/results/{name}/{file}"})
            written += 1
    return written


def stash_runs(name: str, out_dir: str | Path | None = None, root: Path = ROOT) -> int:
    """Save the finished runs of an unfinished evaluation of `name` as docs/results/<name>/pending.jsonl.gz.

    For a regeneration that outlives a session: commit the file, and a later `publish_results.py --run`
    (on any checkout) seeds these records and trains only the rest. Records are kept without their
    curves; one whose spec the config no longer makes is simply trained again. The next `publish`
    removes the file (its records are then in runs.jsonl.gz). Returns how many records were saved.
    """
    runs_dir = eval_out_dir(name, out_dir, root) / "runs"
    dest = root / "docs" / "results" / name / PENDING_FILE
    records = {}
    if dest.exists():  # earlier stashes: keep what this out_dir does not hold
        records = {r["id"]: r for r in read_runs(dest)}
    for path in sorted(runs_dir.glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a run being written; it is trained again
        if rec.get("status") not in (None, "error"):
            records[rec["id"]] = {k: v for k, v in rec.items() if k not in ("history", "seeded_from")}
    if not records:
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_runs(dest, [records[k] for k in sorted(records)])
    return len(records)


def _small_png(src: Path, dest: Path) -> None:
    """`src` saved as a 256-colour palette PNG (a line plot loses nothing visible; about a third of the bytes)."""
    from PIL import Image  # matplotlib's own dependency

    with Image.open(src) as im:
        im.convert("RGB").quantize(256).save(dest, "PNG", optimize=True)


# ------------------------------------------------------------ README tables
def update_text(text: str, results_dir: Path = RESULTS_DIR) -> str:
    """`text` with every `<!-- results:... -->` block regenerated from `results_dir`."""

    def repl(m: re.Match[str]) -> str:
        body = render(m["name"], m["view"], _args(m["args"]), results_dir)
        return m.group(1) + body + m["close"]

    _check_markers(text)
    return BLOCK.sub(repl, text)


def _check_markers(text: str) -> None:
    n_open, n_blocks = len(OPEN.findall(text)), len(BLOCK.findall(text))
    if n_open != n_blocks:
        raise ValueError(f"{n_open} `<!-- results:NAME VIEW -->` markers but {n_blocks} complete blocks: each needs its own `<!-- /results -->` line")


def stale_blocks(text: str, results_dir: Path = RESULTS_DIR) -> list[str]:
    """The marker lines of blocks whose text differs from what `results_dir` generates."""
    _check_markers(text)
    out = []
    for m in BLOCK.finditer(text):
        if m["body"] != render(m["name"], m["view"], _args(m["args"]), results_dir):
            out.append(m.group(1).strip())
    return out


def _args(text: str) -> dict[str, str]:
    args = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"results marker argument {item!r} must look like key=value")
        args[key] = value
    return args


def load(name: str, results_dir: Path = RESULTS_DIR) -> dict[str, Any] | None:
    path = results_dir / name / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def render(name: str, view: str, args: dict[str, str], results_dir: Path = RESULTS_DIR) -> str:
    results = load(name, results_dir)
    if results is None:
        return f"_No committed results for `{name}` yet: `make results` (or `python scripts/publish_results.py --run {name}`) makes them._\n"
    views = {"summary": _summary, "rows": _rows, "sensitivity": _sensitivity}
    if view not in views:
        raise ValueError(f"unknown results view {view!r}; valid: {', '.join(views)}")
    return caption(name, results) + "\n" + "\n".join(views[view](results, args)) + "\n"


def caption(name: str, results: dict[str, Any]) -> str:
    cfg = results["config"]
    v = results.get("versions") or {}
    stamp = "; ".join(f"`{label}` checkpoint sha256 `{c['sha256'][:12]}…`" for label, c in (results.get("meta_checkpoints") or {}).items())
    return (
        f"_From [`docs/results/{name}/`](/docs/results/{name}/results.md), made by `python evaluate.py --config configs/{name}.yaml` "
        f"({len(cfg['seeds'])} seeds, preset `{cfg['preset']}`, {format_duration(results.get('training_seconds') or 0)} of training summed over runs; "
        f"torch {v.get('torch')}, metalr {v.get('metalr')}; {results.get('created', '')[:10]}{'; ' + stamp if stamp else ''}). "
        "Mean ± std over seeds; **bold** = best in column._\n"
    )


def _main_rows(results: dict[str, Any], task: str, only: list[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    cells = results["aggregate"].get(task, {})
    tuned = results.get("tuned_reference", {}).get(task)
    rows = [(label, c) for label, c in cells.items() if c["group"] == "main"]
    if tuned and tuned["best_label"] in cells:
        rows.append((f"{results['config']['tuned']['strategy']}{TUNED_SUFFIX}", cells[tuned["best_label"]]))
    if only is not None:
        wanted = [f"{results['config']['tuned']['strategy']}{TUNED_SUFFIX}" if x == "tuned" else x for x in only]
        by = dict(rows)
        rows = [(label, by[label]) for label in wanted if label in by]
    return rows


def _cell(cell: dict[str, Any], key: str, rows: dict[str, dict[str, Any]]) -> str:
    if "/" in key:
        metric, _, ref = key.partition("/")
        a, b = mean_of(cell, metric), mean_of(rows[ref], metric) if ref in rows else None
        return f"{a / b:.2f}x" if a is not None and b else "–"
    text = _fmt(cell["metrics"].get(key), key)
    if key in TARGET_KEYS:
        text += f" ({cell['n_reached']}/{cell['n']})"
    elif key.startswith("final_") and cell["n_diverged"] and cell["metrics"].get(key):
        text += " †"
    return text


def _header(key: str) -> str:
    if "/" in key:
        metric, _, ref = key.partition("/")
        return f"{_header(metric)} vs {ref}"
    return HEADERS.get(key, key.removeprefix("final_val_").removeprefix("final_"))


def _headline(results: dict[str, Any], task: str) -> str:
    ref = results.get("tuned_reference", {}).get(task)
    return f"final_{ref['metric']}" if ref else "final_val_accuracy"


def _summary(results: dict[str, Any], args: dict[str, str]) -> list[str]:
    tasks = list(results["aggregate"])
    per_task = {t: _main_rows(results, t) for t in tasks}
    labels = list(dict.fromkeys(label for rows in per_task.values() for label, _ in rows))
    header = ["strategy"]
    for t in tasks:
        header += [f"{t} {_header(_headline(results, t))}", f"{t} steps→target"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    bold = {}
    for t in tasks:
        for key in (_headline(results, t), "steps_to_target"):
            bold[(t, key)] = _best_rows(per_task[t], key)
    for label in labels:
        row = [label]
        for t in tasks:
            rows = dict(per_task[t])
            for key in (_headline(results, t), "steps_to_target"):
                text = _cell(rows[label], key, rows) if label in rows else "–"
                row.append(f"**{text}**" if label in bold[(t, key)] else text)
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _rows(results: dict[str, Any], args: dict[str, str]) -> list[str]:
    cols = args.get("cols", "final_val_accuracy,final_val_loss,steps_to_target").split(",")
    only = args["strategies"].split(",") if "strategies" in args else None
    lines = ["| task | strategy | " + " | ".join(_header(c) for c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for task in results["aggregate"]:
        rows = _main_rows(results, task, only)
        by = dict(rows)
        bold = {c: _best_rows(rows, c) if "/" not in c and c != "steps_run" else set() for c in cols}
        for label, cell in rows:
            cells = [_cell(cell, c, by) for c in cols]
            cells = [f"**{x}**" if label in bold[c] else x for x, c in zip(cells, cols)]
            lines.append(f"| {task} | {label} | " + " | ".join(cells) + " |")
    return lines


def _sensitivity(results: dict[str, Any], args: dict[str, str]) -> list[str]:
    sens = results.get("sensitivity") or {}
    if not sens.get("robustness"):
        return ["_This evaluation has no LR-sensitivity sweep (`sensitivity.enabled: false`)._"]
    rt, bt = sens["reference_tol"], sens["best_tol"]
    mults = sorted({m for t in sens["tasks"].values() for s in t["strategies"].values() for m in s["multipliers"]})
    lines = [
        f"| strategy | LR swept | within {100 * rt:g}% of tuned cosine | LR range within {100 * bt:g}% of own best (decades) | "
        + " | ".join(f"{t} x{mults[0]:.3g} / x{mults[-1]:.3g}" for t in sens["tasks"])
        + " |",
        "|---|---|---|---|" + "---|" * len(sens["tasks"]),
    ]
    ranked = sorted(sens["robustness"].items(), key=lambda kv: (-(kv[1]["within_ref_frac"] or 0.0), -kv[1]["width_decades"]))
    for label, r in ranked:
        ends = []
        for t in sens["tasks"].values():
            s = t["strategies"].get(label)
            ends.append(f"{_score(s, 0)} / {_score(s, -1)}" if s else "–")
        frac = f"{r['within_ref_frac']:.2f}" if r["within_ref_frac"] is not None else "–"
        swept = "own LR" if r["lr_arg"] == "optimizer" else "task LR"
        lines.append(f"| {label} | {swept} | {frac} | {r['width_decades']:.2f} | " + " | ".join(ends) + " |")
    return lines


def _score(s: dict[str, Any], i: int) -> str:
    text = f"{s['scores'][i]:.3f}" if s["scores"][i] is not None and math.isfinite(s["scores"][i]) else "inf"
    return text + (f" ({s['n_diverged'][i]} div)" if s["n_diverged"][i] else "")
