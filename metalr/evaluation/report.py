"""Turn run records into results: aggregates over seeds, the tuned reference, the
performance profile, a Markdown report and plots.

Everything is computed from the saved per-run records, so a resumed evaluation
reports exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from metalr.evaluation.run_metrics import lower_is_better

TUNED_SUFFIX = " (tuned)"
QUALITY = [
    ("final_val_accuracy", "acc (final)"),
    ("best_val_accuracy", "acc (best)"),
    ("final_val_loss", "val loss"),
    ("final_val_macro_f1", "macro F1"),
    ("final_val_ece", "ECE"),
]
EFFICIENCY = [
    ("steps_to_target", "steps to target"),
    ("time_to_target", "s to target"),
    ("steps_to_95pct_final_acc", "steps to 95% final acc"),
    ("stability_val_loss_std", "val-loss std (last 5)"),
    ("uncertainty_pearson", "unc-err Pearson"),
    ("uncertainty_spearman", "unc-err Spearman"),
    ("wall_time", "wall s"),
    ("ms_per_step", "ms/step"),
    ("peak_memory_mb", "peak MB"),
]
TARGET_KEYS = ("steps_to_target", "time_to_target")


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _stats(values: list[float]) -> dict[str, float | int]:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a)}


# ----------------------------------------------------------------- aggregation
def aggregate(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{task: {label: {n, n_diverged, n_errors, n_reached, metrics: {key: {mean, std, n}}}}}, mean/std over seeds.

    A metric's mean is over the runs where it is defined: `final_*` excludes diverged
    runs (they have no final model; `n_diverged` says how many), `*_to_target` only
    counts runs that reached the target (`n_reached` of `n`).
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for rec in records:
        spec = rec["spec"]
        cell = out.setdefault(spec["task"], {}).setdefault(
            spec["label"], {"n": 0, "n_diverged": 0, "n_errors": 0, "n_reached": 0, "group": spec["group"], "values": {}}
        )
        cell["n"] += 1
        if rec["status"] == "error":
            cell["n_errors"] += 1
            continue
        m = rec["metrics"]
        cell["n_diverged"] += bool(m.get("diverged"))
        cell["n_reached"] += bool(m.get("reached_target"))
        for k, v in m.items():
            if _num(v):
                cell["values"].setdefault(k, []).append(float(v))
    for cells in out.values():
        for cell in cells.values():
            cell["metrics"] = {k: _stats(v) for k, v in cell.pop("values").items()}
    return out


def mean_of(cell: dict[str, Any], key: str) -> float | None:
    s = cell["metrics"].get(key)
    return s["mean"] if s else None


# ------------------------------------------------------------ tuned reference
def tuned_reference(
    records: list[dict[str, Any]], agg: dict[str, dict[str, dict[str, Any]]], metric: str = "val_accuracy", task_metrics: dict[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Per task, the tuned grid's best LR by mean final `metric` (`task_metrics[task]` if given) over seeds.

    Diverged or failed seeds count as the worst value (0 for accuracy-like metrics,
    +inf for losses), so an LR that diverges on some seeds is not picked for its
    lucky ones. Falls back to val_loss for a task that does not report `metric`.
    """
    out: dict[str, dict[str, Any]] = {}
    by_task: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for rec in records:
        if rec["spec"]["group"] == "tuned":
            by_task.setdefault(rec["spec"]["task"], {}).setdefault(rec["spec"]["label"], []).append(rec)
    for task, by_label in by_task.items():
        want = (task_metrics or {}).get(task, metric)
        key = want if any(_num(r.get("metrics", {}).get(f"final_{want}")) for rs in by_label.values() for r in rs) else "val_loss"
        worst = math.inf if lower_is_better(key) else 0.0
        rows: list[dict[str, Any]] = []
        for label, recs in by_label.items():
            vals = [r["metrics"][f"final_{key}"] if r["status"] != "error" and _num(r["metrics"].get(f"final_{key}")) else worst for r in recs]
            spec = recs[0]["spec"]
            rows.append({"label": label, "lr": recs[0].get("lr"), "lr_factor": spec["lr_factor"] or 1.0, "score": float(np.mean(vals)), "n": len(vals)})
        rows.sort(key=lambda r: r["lr_factor"])
        best = (min if lower_is_better(key) else max)(rows, key=lambda r: r["score"])
        cell = agg[task][best["label"]]
        out[task] = {
            "metric": key,
            "best_label": best["label"],
            "best_lr": best["lr"],
            "best_lr_factor": best["lr_factor"],
            "mean": mean_of(cell, f"final_{key}"),
            "grid": rows,
            "at_edge": best is rows[0] or best is rows[-1],
        }
    return out


def delta_vs_tuned(agg: dict[str, dict[str, dict[str, Any]]], tuned: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """{task: {label: 100 * (mean final metric - tuned mean) / |tuned mean|}} (positive: better for accuracy)."""
    out: dict[str, dict[str, float | None]] = {}
    for task, ref in tuned.items():
        out[task] = {}
        for label, cell in agg[task].items():
            if cell["group"] == "sensitivity":
                continue
            m = mean_of(cell, f"final_{ref['metric']}")
            ok = m is not None and ref["mean"] is not None and ref["mean"] != 0
            out[task][label] = 100.0 * (m - ref["mean"]) / abs(ref["mean"]) if ok else None  # type: ignore[operator]
    return out


# -------------------------------------------------------- performance profile
def times_to_target(records: list[dict[str, Any]], key: str, tuned: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, float]]:
    """{task: {label: median over seeds of `key`, inf for a seed that missed the target}}.

    Main strategies, plus one "<strategy> (tuned)" entry per task taken from the tuned grid's best LR.
    """
    runs: dict[str, dict[str, list[float]]] = {}
    tuned = tuned or {}
    for rec in records:
        spec = rec["spec"]
        label = spec["label"]
        if spec["group"] == "sensitivity":
            continue
        if spec["group"] == "tuned":
            if tuned.get(spec["task"], {}).get("best_label") != label:
                continue
            label = spec["controller"] + TUNED_SUFFIX
        v = rec.get("metrics", {}).get(key) if rec["status"] != "error" else None
        runs.setdefault(spec["task"], {}).setdefault(label, []).append(float(v) if v is not None and _num(v) else math.inf)
    return {task: {label: float(np.median(v)) for label, v in cells.items()} for task, cells in runs.items()}


def performance_profile(times: dict[str, dict[str, float]], tau_max: float = 4.0, n_points: int = 200) -> dict[str, Any]:
    """AlgoPerf-style profile: rho_s(tau) = fraction of tasks where strategy s reaches the
    target within tau x the fastest strategy's time on that task.

    `score` is the mean of rho over log-spaced tau in [1, tau_max] (the normalised area
    under the profile on a log axis): 1 = fastest everywhere, 0 = never within tau_max.
    """
    labels = sorted({label for cells in times.values() for label in cells})
    ratios: dict[str, dict[str, float]] = {}
    for task, cells in times.items():
        best = min(cells.values()) if cells else math.inf
        ratios[task] = {label: t / best if math.isfinite(t) and 0 < best < math.inf else math.inf for label, t in cells.items()}
    taus = np.exp(np.linspace(0.0, math.log(tau_max), n_points))
    n_tasks = max(1, len(times))
    curves = {label: [float(sum(ratios[t].get(label, math.inf) <= tau for t in ratios) / n_tasks) for tau in taus] for label in labels}
    return {"taus": taus.tolist(), "curves": curves, "ratios": ratios, "score": {label: float(np.mean(c)) for label, c in curves.items()}}


# ------------------------------------------------------------------- Markdown
def _fmt(stats: dict[str, Any] | None, key: str) -> str:
    if not stats:
        return "–"
    mean, std = stats["mean"], stats["std"]
    if key.startswith("steps") or key in ("steps_run",):
        return f"{mean:.0f} ± {std:.0f}"
    if key == "peak_memory_mb":
        return f"{mean:.0f}"
    return f"{mean:.4g} ± {std:.2g}"


def _best_rows(rows: list[tuple[str, dict[str, Any]]], key: str) -> set[str]:
    """Labels holding the best value of column `key` (target columns: most reached first, then fastest)."""
    scored = []
    for label, cell in rows:
        m = mean_of(cell, key)
        if m is None:
            continue
        sign = 1.0 if lower_is_better(key) else -1.0
        primary = -cell["n_reached"] / max(cell["n"], 1) if key in TARGET_KEYS else 0.0
        scored.append(((primary, sign * m), label))
    if len(rows) < 2 or not scored:
        return set()
    best = min(s for s, _ in scored)
    return {label for s, label in scored if s == best}


def _table(rows: list[tuple[str, dict[str, Any]]], columns: list[tuple[str, str]], extra: dict[str, dict[str, str]] | None = None) -> list[str]:
    extra = extra or {}
    headers = ["strategy"] + [h for _, h in columns] + list(extra)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    bold = {key: _best_rows(rows, key) for key, _ in columns}
    for label, cell in rows:
        cells = [label]
        for key, _ in columns:
            text = _fmt(cell["metrics"].get(key), key)
            if key in TARGET_KEYS:
                text += f" ({cell['n_reached']}/{cell['n']})"
            elif key.startswith("final_") and cell["n_diverged"] and cell["metrics"].get(key):
                text += " †"
            cells.append(f"**{text}**" if label in bold[key] else text)
        cells += [col.get(label, "–") for col in extra.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The human-readable report: per-task tables (mean ± std over seeds, best in bold), tuned reference, profile."""
    agg, tuned, deltas = results["aggregate"], results["tuned_reference"], results["delta_vs_tuned_pct"]
    cfg = results["config"]
    lines = [
        "# metalr evaluation",
        "",
        f"Tasks: {', '.join(cfg['tasks'])}. Seeds: {cfg['seeds']}. Preset: {cfg['preset']}. "
        f"Runs: {len(results['runs'])} ({results['counts']['executed']} trained now, {results['counts']['reused']} reused, {results['counts']['errors']} failed).",
        "",
        "Cells are mean ± std (sample std) over seeds; **bold** is the best in its column. "
        "† = mean over the seeds that did not diverge. Target columns count only runs that reached the task's target, with (reached/runs); "
        "a diverged run never reaches it.",
    ]
    scopes = [(r.get("env") or {}).get("peak_memory", "process") for r in results["runs"] if r.get("status") in ("ok", "diverged")]
    if "process" in scopes:  # records made before the peak was reset per run (or where it could not be)
        which = "every run" if "run" not in scopes else f"{scopes.count('process')} of {len(scopes)} runs"
        lines[-1] += (
            f" Peak MB of {which} is the worker process's largest memory so far, earlier runs in the same worker included: an "
            "upper bound, not comparable between rows (runs recorded since session 27 give the most they added to the process's memory)."
        )
    if results["counts"]["reused"]:
        lines[-1] += (
            " Time columns (s to target, wall s, ms/step, the wall-time profile) mix runs timed at different times: "
            "a reused run keeps the time measured when it was trained, under that moment's machine load; compare them loosely."
        )
    stamp = results.get("meta_checkpoints") or {}
    for task, cells in agg.items():
        main = [(label, c) for label, c in cells.items() if c["group"] == "main"]
        if task in tuned:
            main.append((_tuned_row_label(results, task), cells[tuned[task]["best_label"]]))
        target: Any = next((r["metrics"].get("target") for r in results["runs"] if r["spec"]["task"] == task and r.get("metrics")), {})
        passthrough = sorted({k for _, c in main for k in c["metrics"] if k.startswith("final_") and k not in dict(QUALITY)})
        quality = QUALITY + [(k, k.removeprefix("final_")) for k in passthrough]
        quality = [(k, h) for k, h in quality if any(k in c["metrics"] for _, c in main)]
        extra: dict[str, dict[str, str]] = {}
        if task in deltas:
            extra[f"Δ {tuned[task]['metric']} vs tuned"] = {label: (f"{d:+.2f}%" if d is not None else "–") for label, d in deltas[task].items()}
            extra[f"Δ {tuned[task]['metric']} vs tuned"][_tuned_row_label(results, task)] = "+0.00%"
        efficiency = [(k, h) for k, h in EFFICIENCY if any(k in c["metrics"] for _, c in main) or k in TARGET_KEYS]
        diverged = {f"{label}": f"{c['n_diverged']}/{c['n']}" + (f" ({c['n_errors']} failed)" if c["n_errors"] else "") for label, c in main}
        lines += ["", f"## {task}", "", f"Target: {target or '(none)'}.", ""]
        lines += [
            f"**Not held out for `{label}`**: the task is {c['not_held_out'][task]}; its row here is not a held-out result.\n"
            for label, c in stamp.items()
            if task in (c.get("not_held_out") or {})
        ]
        lines += ["Quality (final = last evaluation):", ""]
        lines += _table(main, quality, extra)
        lines += ["", "Speed, stability and cost:", ""]
        lines += _table(main, efficiency, {"diverged": diverged})
    if tuned:
        lines += ["", "## Tuned reference", ""]
        for task, ref in tuned.items():
            grid = ", ".join(f"lr={r['lr']:.3g}: {r['score']:.4f}" for r in ref["grid"])
            edge = " (best LR is at the edge of the grid: widen `tuned.factor`)" if ref["at_edge"] else ""
            lines.append(
                f"- {task}: best lr {ref['best_lr']:.3g} (x{ref['best_lr_factor']:.3g} the default), mean final {ref['metric']} {ref['mean']:.4f}{edge}. Grid: {grid}."
            )
    prof = results.get("profile") or {}
    if prof:
        lines += [
            "",
            "## Performance profile (time to target)",
            "",
            f"Score = mean of rho(tau) over log-spaced tau in [1, {cfg['profile_tau_max']}] (1 = fastest on every task).",
            "",
        ]
        lines += ["| strategy | " + " | ".join(f"score ({k})" for k in prof) + " |", "|---|" + "---|" * len(prof)]
        labels = sorted({label for p in prof.values() for label in p["score"]})
        for label in labels:
            lines.append(f"| {label} | " + " | ".join(f"{p['score'].get(label, 0.0):.3f}" for p in prof.values()) + " |")
    lines += sensitivity_markdown(results.get("sensitivity") or {})
    if stamp:
        lines += ["", "## Meta-controller checkpoint", ""]
        for label, c in stamp.items():
            lines.append(f"- `{label}`: `{c['path']}`, sha256 `{c['sha256']}`")
            lines += [f"  - **not held out**: `{task}` ({why})" for task, why in (c.get("not_held_out") or {}).items()]
    return "\n".join(lines) + "\n"


def _tuned_row_label(results: dict[str, Any], task: str) -> str:
    ref = results["tuned_reference"][task]
    return f"{results['config']['tuned']['strategy']}{TUNED_SUFFIX} lr={ref['best_lr']:.3g}"


# ---------------------------------------------------------------------- plots
def _mean_curve(curves: list[tuple[list[float], list[float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds on the steps all seeds share (a diverged seed shortens the curve)."""
    n = min(len(x) for x, _ in curves)
    x = np.asarray(curves[0][0][:n], dtype=float)
    y = np.nanmean(np.asarray([[np.nan if v is None else v for v in c[1][:n]] for c in curves], dtype=float), axis=0) if n else np.zeros(0)
    return x, y


def _colors(n: int) -> list[Any]:
    """Distinct colours for up to 20 lines (the default cycle repeats after 10)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def plot_task(task: str, records: list[dict[str, Any]], tuned: dict[str, Any] | None, path: str) -> None:
    """Val loss and LR against step, one line per strategy (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        spec = rec["spec"]
        if spec["task"] != task or rec["status"] == "error" or spec["group"] == "sensitivity" or not rec.get("history"):
            continue  # (a record seeded from published results has no curves: `publish.seed_out_dir`)
        if spec["group"] == "tuned":
            if not tuned or tuned.get("best_label") != spec["label"]:
                continue
            series.setdefault(spec["controller"] + TUNED_SUFFIX, []).append(rec)
        else:
            series.setdefault(spec["label"], []).append(rec)
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = _colors(len(series))
    for color, (label, recs) in zip(colors, series.items()):
        evals = [([e["step"] for e in r["history"]["evals"]], [e.get("val_loss") for e in r["history"]["evals"]]) for r in recs]
        style = "--" if label.endswith(TUNED_SUFFIX) else "-"
        if all(len(s) for s, _ in evals):
            x, y = _mean_curve(evals)
            ax_loss.plot(x, y, style, color=color, label=label, marker="o", markersize=3)
        x, y = _mean_curve([(r["history"]["steps"], r["history"]["lr"]) for r in recs])
        ax_lr.plot(x, y, style, color=color, label=label)
    ax_loss.set(title=f"{task}: validation loss (mean over seeds)", xlabel="step", ylabel="val loss")
    ax_lr.set(title=f"{task}: learning rate (mean over seeds)", xlabel="step", ylabel="lr", yscale="log")
    ax_lr.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_profile(profiles: dict[str, dict[str, Any]], path: str) -> None:
    """One panel per time measure (steps, wall time): rho(tau) per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(profiles), figsize=(6 * len(profiles), 4.5), squeeze=False)
    for ax, (name, prof) in zip(axes[0], profiles.items()):
        ranked = sorted(prof["curves"].items(), key=lambda kv: -prof["score"][kv[0]])
        for color, (label, curve) in zip(_colors(len(ranked)), ranked):
            ax.step(
                prof["taus"],
                curve,
                where="post",
                color=color,
                label=f"{label} ({prof['score'][label]:.2f})",
                linestyle="--" if label.endswith(TUNED_SUFFIX) else "-",
            )
        ticks = [t for t in (1, 1.25, 1.5, 2, 3, 4, 6, 8, 16, 32) if t <= prof["taus"][-1]]
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set(
            xlabel="tau (x the fastest strategy's time)", ylabel="fraction of tasks reaching target", title=f"Performance profile: {name}", ylim=(-0.02, 1.02)
        )
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------ LR sensitivity
def sweep_base_label(label: str) -> str:
    """`constant@x0.1` -> `constant` (the suffix is `grid.sweep_label`'s)."""
    return label.rsplit("@x", 1)[0]


def _within(score: float, ref: float, tol: float, lower: bool) -> bool:
    if not (math.isfinite(score) and math.isfinite(ref)):
        return False
    return score <= ref + tol * abs(ref) if lower else score >= ref - tol * abs(ref)


def _width_decades(multipliers: list[float], scores: list[float], tol: float, lower: bool) -> tuple[float, bool]:
    """Width in decades of the contiguous run of multipliers, around the best one, whose score is
    within `tol` (relative) of the best; and whether that run touches an end of the sweep (then
    the true width is larger than measured)."""
    finite = [s for s in scores if math.isfinite(s)]
    if not finite:
        return 0.0, False
    best = min(finite) if lower else max(finite)
    if not lower and best <= 0.0:
        return 0.0, False
    i = scores.index(best)
    lo = hi = i
    while lo > 0 and _within(scores[lo - 1], best, tol, lower):
        lo -= 1
    while hi < len(scores) - 1 and _within(scores[hi + 1], best, tol, lower):
        hi += 1
    return math.log10(multipliers[hi] / multipliers[lo]), lo == 0 or hi == len(scores) - 1


def sensitivity(
    records: list[dict[str, Any]],
    tuned: dict[str, dict[str, Any]],
    metrics: dict[str, str],
    reference_tol: float = 0.02,
    best_tol: float = 0.01,
) -> dict[str, Any]:
    """The LR-sensitivity sweep, per task and strategy, and one robustness score per strategy.

    Per task the metric is the tuned reference's (`metrics[task]` when there is none). A
    multiplier's score is the mean final metric over seeds, a diverged or failed seed counting
    as the worst value (0 for accuracy-like metrics, +inf for losses). Robustness per strategy:
    `within_ref_frac`, the fraction of (task, multiplier) cells within `reference_tol` of the
    task's tuned reference (its best LR's score), and `width_decades`, the mean over tasks of
    the width (decades of LR) of the range within `best_tol` of the strategy's own best.
    """
    cells: dict[str, dict[str, dict[float, list[dict[str, Any]]]]] = {}
    for rec in records:
        spec = rec["spec"]
        if spec["group"] == "sensitivity":
            m = float(spec["lr_factor"] or 1.0)
            cells.setdefault(spec["task"], {}).setdefault(sweep_base_label(spec["label"]), {}).setdefault(m, []).append(rec)
    out: dict[str, Any] = {"tasks": {}, "robustness": {}, "reference_tol": reference_tol, "best_tol": best_tol}
    per_label: dict[str, dict[str, list[Any]]] = {}
    for task, by_label in cells.items():
        ref = tuned.get(task)
        key = ref["metric"] if ref else metrics.get(task, "val_accuracy")
        if not ref and not any(_num(r.get("metrics", {}).get(f"final_{key}")) for ms in by_label.values() for rs in ms.values() for r in rs):
            key = "val_loss"
        lower = lower_is_better(key)
        worst = math.inf if lower else 0.0
        ref_score = next((row["score"] for row in ref["grid"] if row["label"] == ref["best_label"]), None) if ref else None
        task_out: dict[str, Any] = {"metric": key, "reference": ref_score, "reference_label": ref["best_label"] if ref else None, "strategies": {}}
        for label, by_m in by_label.items():
            mults = sorted(by_m)
            scores, n, n_div, lrs = [], [], [], []
            for m in mults:
                recs = by_m[m]
                vals = [r["metrics"][f"final_{key}"] if r["status"] != "error" and _num(r["metrics"].get(f"final_{key}")) else worst for r in recs]
                scores.append(float(np.mean(vals)))
                n.append(len(recs))
                n_div.append(sum(r["status"] != "ok" for r in recs))
                lrs.append(recs[0].get("lr"))
            within = [_within(s, ref_score, reference_tol, lower) for s in scores] if ref_score is not None else None
            width, open_ended = _width_decades(mults, scores, best_tol, lower)
            first = by_m[mults[0]][0]
            task_out["strategies"][label] = {
                "controller": first["spec"]["controller"],
                "lr_arg": first.get("lr_arg", "task"),
                "multipliers": mults,
                "lr": lrs,
                "scores": scores,
                "n": n,
                "n_diverged": n_div,
                "within_reference": within,
                "width_decades": width,
                "width_open_ended": open_ended,
            }
            acc = per_label.setdefault(label, {"within": [], "widths": [], "lr_arg": []})
            acc["within"] += within or []
            acc["widths"].append(width)
            acc["lr_arg"].append(first.get("lr_arg", "task"))
        out["tasks"][task] = task_out
    for label, acc in per_label.items():
        out["robustness"][label] = {
            "within_ref_frac": float(np.mean(acc["within"])) if acc["within"] else None,
            "width_decades": float(np.mean(acc["widths"])),
            "lr_arg": "optimizer" if "optimizer" in acc["lr_arg"] else "task",
            "n_tasks": len(acc["widths"]),
        }
    return out


OWN_LR_MARK = "ᵒ"


def sensitivity_markdown(sens: dict[str, Any]) -> list[str]:
    """The sweep's Markdown: a table per task (score per multiplier) and the robustness table."""
    if not sens or not sens.get("tasks"):
        return []
    rt, bt = sens["reference_tol"], sens["best_tol"]
    lines = [
        "",
        "## LR sensitivity",
        "",
        f"Final metric (mean over seeds; a diverged seed counts as 0, or +inf for a loss) at each multiplier of the base LR. "
        f"The base LR is the task's LR, except for strategies marked {OWN_LR_MARK}, which build their own optimizer: "
        "their own LR argument is swept (Prodigy and D-Adaptation: the multiplier of their estimated step size, default 1.0; "
        f"schedule-free: its LR). **Bold**: within {100 * rt:g}% of the tuned reference. (k div) = k seeds diverged. "
        f"Width = decades of LR, around the strategy's best multiplier, within {100 * bt:g}% of that best (≥: the range reaches the end of the sweep).",
    ]
    for task, t in sens["tasks"].items():
        mults = sorted({m for s in t["strategies"].values() for m in s["multipliers"]})
        ref = f"{t['reference']:.4f} ({t['reference_label']})" if t["reference"] is not None else "none (tuned reference off)"
        lines += ["", f"### {task}: final {t['metric']}", "", f"Tuned reference: {ref}.", ""]
        lines.append("| strategy | " + " | ".join(f"x{m:.3g}" for m in mults) + f" | within {100 * rt:g}% of tuned | width (decades) |")
        lines.append("|---|" + "---|" * (len(mults) + 2))
        for label, s in t["strategies"].items():
            row = [label + (f" {OWN_LR_MARK}" if s["lr_arg"] == "optimizer" else "")]
            for m in mults:
                if m not in s["multipliers"]:
                    row.append("–")
                    continue
                i = s["multipliers"].index(m)
                text = f"{s['scores'][i]:.4f}" if math.isfinite(s["scores"][i]) else "inf"
                if s["n_diverged"][i]:
                    text += f" ({s['n_diverged'][i]} div)"
                row.append(f"**{text}**" if s["within_reference"] and s["within_reference"][i] else text)
            within = s["within_reference"]
            row.append(f"{sum(within)}/{len(within)}" if within is not None else "–")
            row.append(("≥" if s["width_open_ended"] else "") + f"{s['width_decades']:.2f}")
            lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "### Robustness to the base LR",
        "",
        f"Per strategy, over every swept task: the fraction of (task, multiplier) cells within {100 * rt:g}% of the task's tuned reference, "
        f"and the mean width (decades) of the LR range within {100 * bt:g}% of the strategy's own best.",
        "",
        f"| strategy | LR swept | within {100 * rt:g}% of tuned | width within {100 * bt:g}% of own best (decades) |",
        "|---|---|---|---|",
    ]
    ranked = sorted(sens["robustness"].items(), key=lambda kv: (-(kv[1]["within_ref_frac"] or 0.0), -kv[1]["width_decades"]))
    for label, r in ranked:
        frac = f"{r['within_ref_frac']:.2f}" if r["within_ref_frac"] is not None else "–"
        swept = "own LR argument" if r["lr_arg"] == "optimizer" else "task LR"
        lines.append(f"| {label} | {swept} | {frac} | {r['width_decades']:.2f} |")
    return lines


def plot_sensitivity(task: str, t: dict[str, Any], path: str, reference_tol: float = 0.02) -> None:
    """Final metric against the LR multiplier (log axis), one line per strategy; the tuned
    reference as a dashed line with its tolerance band; diverged seeds marked with x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    items = list(t["strategies"].items())
    for color, (label, s) in zip(_colors(len(items)), items):
        ys = [y if math.isfinite(y) else np.nan for y in s["scores"]]
        own = s["lr_arg"] == "optimizer"
        ax.plot(s["multipliers"], ys, "--" if own else "-", color=color, marker="o", markersize=4, label=label + (" (own LR)" if own else ""))
        bad = [(m, y) for m, y, k in zip(s["multipliers"], ys, s["n_diverged"]) if k]
        if bad:
            ax.plot([m for m, _ in bad], [y for _, y in bad], "x", color=color, markersize=10, markeredgewidth=2)
    if t["reference"] is not None and math.isfinite(t["reference"]):
        ref = t["reference"]
        ax.axhline(ref, color="black", linestyle=":", linewidth=1.5, label=f"tuned cosine ({ref:.3f})")
        ax.axhspan(ref - reference_tol * abs(ref), ref + reference_tol * abs(ref), color="grey", alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    mults = sorted({m for s in t["strategies"].values() for m in s["multipliers"]})
    ax.set_xticks(mults, [f"x{m:.3g}" for m in mults])
    ax.minorticks_off()
    ax.set(xlabel="multiplier of the base LR", ylabel=f"final {t['metric']} (diverged seed = 0)", title=f"{task}: LR sensitivity (x = a seed diverged)")
    ax.legend(fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
