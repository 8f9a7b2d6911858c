"""evaluate.py end to end on tiny grids: files written, divergence recorded, resume, config validation."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # evaluate.py lives at the repo root

import evaluate as evaluate_script  # noqa: E402
from metalr.config import ConfigError, from_dict  # noqa: E402
from metalr.evaluation import EvalConfig, TunedConfig, evaluate  # noqa: E402
from metalr.evaluation.grid import RunSpec, build_specs, execute, run_grid  # noqa: E402

TINY = {"tasks": ["digits_mlp"], "strategies": ["constant", "cosine"], "seeds": [0, 1], "steps": 30, "eval_every": 10, "tuned": {"n_lrs": 0}}
TIMING = {"wall_time", "time_to_target", "peak_memory_mb", "ms_per_step"}


def _cfg(tmp: Path, **kw: Any) -> EvalConfig:
    raw = {**TINY, "out_dir": str(tmp), "workers": 1, **kw}
    return from_dict(EvalConfig, raw)


def _untimed(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in TIMING}


def _run_files(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "runs").glob("*.json"))


def _check_outputs(out: Path, results: dict[str, Any], workers: int) -> None:
    expected = [f"digits_mlp__{s}__{k}.json" for s in ("constant", "cosine") for k in (0, 1)]
    assert _run_files(out) == expected
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["runs"]) == 4 and saved["counts"] == {"reused": 0, "executed": 4, "errors": 0}
    assert saved["config"]["seeds"] == [0, 1] and "torch" in saved["versions"] and saved["workers"] == workers
    for run in saved["runs"]:
        m = run["metrics"]
        assert run["status"] == "ok" and m["steps_run"] == 30 and m["n_evals"] == 3
        for key in (
            "final_val_accuracy",
            "best_val_accuracy",
            "final_val_loss",
            "final_val_macro_f1",
            "final_val_ece",
            "stability_val_loss_std",
            "wall_time",
            "peak_memory_mb",
        ):
            assert isinstance(m[key], float), key
    agg = saved["aggregate"]["digits_mlp"]
    assert set(agg) == {"constant", "cosine"} and agg["cosine"]["metrics"]["final_val_accuracy"]["n"] == 2
    table = (out / "results.md").read_text()
    assert "## digits_mlp" in table and "| cosine |" in table and "**" in table
    assert (out / "plots" / "digits_mlp.png").stat().st_size > 1000 and (out / "plots" / "profile.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == [f[: -len(".json")] for f in expected]
    assert all(any(d.glob("events.out.tfevents.*")) for d in (out / "tensorboard").iterdir())


def test_tiny_grid_writes_every_output_with_one_and_two_workers(tmp_path: Path) -> None:
    """Every run trains with one torch thread however many workers run the grid (in this process too, restoring
    the caller's thread count), so one worker and two give the same numbers bit for bit, and each record says so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a caller with more threads than a run uses
    try:
        one = evaluate(_cfg(tmp_path / "one", workers=1), progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    two = evaluate(_cfg(tmp_path / "two", workers=2), progress=False)
    _check_outputs(tmp_path / "one", one, 1)
    _check_outputs(tmp_path / "two", two, 2)
    for a, b in zip(one["runs"], two["runs"]):
        assert a["id"] == b["id"] and _untimed(a["metrics"]) == _untimed(b["metrics"])
        ha, hb = (json.loads((tmp_path / d / "runs" / f"{a['id']}.json").read_text())["history"] for d in ("one", "two"))
        assert ha["lr"] == hb["lr"] and ha["loss"] == hb["loss"]
        for env in (a["env"], b["env"]):
            assert env["threads"] == 1 and env["torch"] == torch.__version__ and env["cpu"] and env["cores"] >= 1
            assert env["peak_memory"] == ("run" if os.access("/proc/self/clear_refs", os.W_OK) else "process")


def test_a_runs_peak_memory_is_what_it_added_not_the_workers_so_far(tmp_path: Path) -> None:
    """An evaluation worker trains run after run: the process's max RSS held the largest of them all (1465 MB, once one
    run reached it, showed in every later row of its worker in `make run`'s table). A run now reports the most it added
    to the process's memory: a controller holding 200 MB shows them, and the run after it does not; a table with records
    from before says which of its peaks are upper bounds."""
    import numpy as np

    from metalr import controllers, tasks, train
    from metalr.evaluation import report

    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("the peak RSS cannot be reset here (not Linux, or /proc refuses the write)")

    def heavy(opt: torch.optim.Optimizer) -> Any:
        ctrl = controllers.build("constant", opt)
        ctrl.ballast = torch.ones(50 * 2**20)  # type: ignore[attr-defined]  # 200 MB, written, held for the run
        return ctrl

    big = np.ones(600 * 2**20 // 8)  # 600 MB held, then freed before the runs: the process's peak is at least that
    before = train.peak_memory_mb(torch.device("cpu"))
    del big
    task = tasks.build("digits_mlp")
    loaded = train.run(task, heavy, seed=0, steps=5)
    light = train.run(task, "constant", seed=0, steps=5)
    assert loaded.peak_memory_scope == light.peak_memory_scope == "run"
    assert 190 < loaded.peak_memory_mb < 300 and 0 <= light.peak_memory_mb < 100 < before - 600
    results = evaluate(_cfg(tmp_path / "grid", workers=1), progress=False)
    assert "upper bound" not in (tmp_path / "grid" / "results.md").read_text()
    results["runs"][0]["env"].pop("peak_memory")  # a record from before
    assert "Peak MB of 1 of 4 runs is the worker process's largest memory so far" in report.markdown(results)


def test_a_worker_warms_each_task_up_once_untimed_and_unrecorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a process does once (imports, kernel caches, a TensorBoard writer) was measured as the wall time and memory
    of whichever run came first (66 MB of growth against 13 for the runs after it): a worker now first runs two steps
    of constant LR on each task it meets, and records nothing of them."""
    from metalr import train
    from metalr.evaluation import grid

    calls: list[tuple[str, Any, int | None, bool]] = []
    real = train.run

    def counting(task: Any, controller: Any = "constant", **kw: Any) -> Any:
        calls.append((task.name, controller, kw.get("steps"), kw.get("log_dir") is not None))
        return real(task, controller, **kw)

    monkeypatch.setattr(train, "run", counting)
    monkeypatch.setattr(grid, "_TASK_CACHE", {})
    results = evaluate(_cfg(tmp_path, workers=1), progress=False)
    assert calls[0] == ("digits_mlp", "constant", 2, True)  # the warm-up, with a TensorBoard writer like the runs'
    assert [c[2] for c in calls[1:]] == [30] * 4 and len(results["runs"]) == 4 == len(_run_files(tmp_path))


def test_reuse_from_copies_runs_that_train_alike_from_another_evaluation(tmp_path: Path) -> None:
    """`reuse_from`: a run finished in another out dir with the same training (any label) is copied, not trained;
    anything else is trained, and the other evaluation's files are left alone."""
    first = evaluate(_cfg(tmp_path / "a", strategies=["constant"], seeds=[0, 1], tensorboard=False, plots=False), progress=False)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "runs").glob("*.json")}
    strategies = [{"name": "constant", "label": "flat"}, "cosine"]
    cfg = _cfg(tmp_path / "b", strategies=strategies, seeds=[0], tensorboard=False, plots=False, reuse_from=[str(tmp_path / "a"), str(tmp_path / "none")])
    second = evaluate(cfg, progress=False)
    assert second["counts"] == {"reused": 1, "executed": 1, "errors": 0}
    flat = next(r for r in second["runs"] if r["id"] == "digits_mlp__flat__0")
    src = next(r for r in first["runs"] if r["id"] == "digits_mlp__constant__0")
    assert flat["metrics"] == src["metrics"] and flat["reused_from"] == str(tmp_path / "a" / "runs" / "digits_mlp__constant__0.json")
    assert json.loads((tmp_path / "b" / "runs" / "digits_mlp__flat__0.json").read_text())["spec"]["label"] == "flat"
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "runs").glob("*.json")} == before
    longer = evaluate(
        _cfg(tmp_path / "c", strategies=["constant"], seeds=[0], steps=40, tensorboard=False, plots=False, reuse_from=[str(tmp_path / "a")]), progress=False
    )
    assert longer["counts"] == {"reused": 0, "executed": 1, "errors": 0}  # another run length: trained
    with pytest.raises(ConfigError, match="reuse_from lists out_dir itself"):
        _cfg(tmp_path / "b", reuse_from=[str(tmp_path / "b")])


def test_diverged_run_is_recorded_not_dropped(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, tasks=["wine_mlp"], strategies=["constant"], seeds=[0], nan_recovery=False, task_overrides={"wine_mlp": {"lr": 1e6}}, plots=True)
    results = evaluate(cfg, progress=False)
    (run,) = results["runs"]
    assert run["status"] == "diverged" and run["metrics"]["diverged"]
    assert not run["metrics"]["reached_target"] and run["metrics"]["steps_to_target"] is None
    saved = json.loads((tmp_path / "runs" / "wine_mlp__constant__0.json").read_text())  # strict JSON: nan became null
    assert saved["history"]["diverged"] and saved["history"]["loss"][-1] is None
    assert results["aggregate"]["wine_mlp"]["constant"]["n_diverged"] == 1
    assert results["profile"]["steps"]["curves"]["constant"][-1] == 0.0
    assert "| constant |" in (tmp_path / "results.md").read_text()


def test_resume_skips_finished_runs_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "resumed", tensorboard=False, plots=False)
    specs = build_specs(cfg)
    # "interrupted": only the first two runs finished
    _, counts = run_grid(specs[:2], cfg.out_dir, workers=1, tensorboard=False, progress=False)
    assert counts["executed"] == 2
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "resumed" / "runs").glob("*.json")}
    resumed = evaluate(cfg, progress=False)
    assert resumed["counts"] == {"reused": 2, "executed": 2, "errors": 0}
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # finished runs not redone
    whole = evaluate(_cfg(tmp_path / "whole", tensorboard=False, plots=False), progress=False)
    for a, b in zip(resumed["runs"], whole["runs"]):
        assert a["id"] == b["id"] and _untimed(a["metrics"]) == _untimed(b["metrics"])
    again = evaluate(cfg, progress=False)
    assert again["counts"] == {"reused": 4, "executed": 0, "errors": 0}
    # a changed spec (more steps) is not reused
    longer = evaluate(_cfg(tmp_path / "resumed", tensorboard=False, plots=False, steps=40), progress=False)
    assert longer["counts"]["executed"] == 4


def test_resume_redoes_meta_runs_when_the_checkpoint_changes(tmp_path: Path) -> None:
    """The strategy name `meta` is not the controller: a resumed grid must not reuse runs of other weights."""
    import shutil

    from metalr.meta.checkpoint import DEFAULT_PATH, save_policy
    from metalr.meta.policy import MetaPolicy
    from metalr.meta.rule import RuleConfig

    ckpt = tmp_path / "policy.safetensors"
    shutil.copy(DEFAULT_PATH, ckpt)
    strategies = ["constant", {"name": "meta", "controller_kwargs": {"checkpoint": str(ckpt)}}]
    cfg = _cfg(tmp_path / "out", strategies=strategies, seeds=[0], tensorboard=False, plots=False)
    first = evaluate(cfg, progress=False)
    assert first["counts"] == {"reused": 0, "executed": 2, "errors": 0}
    assert evaluate(cfg, progress=False)["counts"] == {"reused": 2, "executed": 0, "errors": 0}
    torch.manual_seed(1)
    save_policy(ckpt, MetaPolicy(), rule=RuleConfig(), config={})  # other weights, same path and label
    again = evaluate(cfg, progress=False)
    assert again["counts"] == {"reused": 1, "executed": 1, "errors": 0}  # constant reused, meta redone
    assert again["meta_checkpoints"]["meta"]["sha256"] != first["meta_checkpoints"]["meta"]["sha256"]


def test_meta_on_a_task_whose_data_its_checkpoint_saw_is_marked_not_held_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An evaluation of `meta` on digits_mlp (its data a meta-training family) or wine_mlp (a checkpoint-selection set)
    reported it beside held-out results without a word. What a checkpoint saw is read from its metadata: its config's
    families, or its LR-label file's tasks instead, over its warm starts (`init_from`), plus the selection sets."""
    from metalr.meta.checkpoint import DEFAULT_PATH, data_seen, save_policy
    from metalr.meta.policy import MetaPolicy
    from metalr.meta.rule import RuleConfig

    start = tmp_path / "start.safetensors"
    save_policy(start, MetaPolicy(), rule=RuleConfig(), config={"data_families": ["iris"]})
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"tasks": [{"spec": {"data": "tokens"}}, {"spec": {"data": "signal"}}]}))
    top = tmp_path / "top.safetensors"
    save_policy(top, MetaPolicy(), rule=RuleConfig(), config={"data_families": ["blobs"], "lr_labels": str(labels), "init_from": str(start)})
    selected = {"wine": "selected on", "breast_cancer": "selected on"}
    assert data_seen(top) == {**selected, **dict.fromkeys(["tokens", "signal", "iris"], "meta-trained on")}  # not blobs: the labels are the draw
    assert data_seen(start) == {**selected, "iris": "meta-trained on"}
    shipped = data_seen(DEFAULT_PATH)
    assert shipped["digits"] == "meta-trained on" and not {"mnist1d", "fashion_mnist", "rotten_tomatoes", "twitter_ner"} & set(shipped)

    strategies = ["constant", "meta", {"name": "meta", "label": "meta_iris", "controller_kwargs": {"checkpoint": str(start)}}]
    cfg = _cfg(tmp_path / "out", tasks=["digits_mlp", "wine_mlp"], strategies=strategies, seeds=[0], tensorboard=False, plots=False)
    with caplog.at_level("WARNING", logger="metalr.evaluation.pipeline"):
        results = evaluate(cfg, progress=False)
    stamp = results["meta_checkpoints"]
    assert stamp["meta"]["not_held_out"] == {
        "digits_mlp": "built on digits, which the checkpoint was meta-trained on",
        "wine_mlp": "built on wine, which the checkpoint was selected on",
    }
    assert stamp["meta_iris"]["not_held_out"] == {"wine_mlp": "built on wine, which the checkpoint was selected on"}
    warned = sorted(r.getMessage().split(" is not")[0] for r in caplog.records if "not a held-out evaluation" in r.getMessage())
    assert warned == ["meta on digits_mlp", "meta on wine_mlp", "meta_iris on wine_mlp"]
    md = (tmp_path / "out" / "results.md").read_text()
    digits = md[md.index("## digits_mlp") : md.index("## wine_mlp")]
    assert "**Not held out for `meta`**: the task is built on digits" in digits and "meta_iris" not in digits.split("Quality")[0]
    assert "  - **not held out**: `digits_mlp` (built on digits, which the checkpoint was meta-trained on)" in md
    held_out = evaluate(
        _cfg(tmp_path / "held", tasks=["digits_mlp"], strategies=strategies[:1] + strategies[2:], seeds=[0], tensorboard=False, plots=False), progress=False
    )
    assert "not_held_out" not in held_out["meta_checkpoints"]["meta_iris"]  # iris only: digits_mlp is held out for it
    assert "Not held out" not in (tmp_path / "held" / "results.md").read_text()


def test_tuned_reference_grid_and_report(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, strategies=["cosine"], seeds=[0], tuned={"n_lrs": 3, "factor": 10.0}, tensorboard=False)
    results = evaluate(cfg, progress=False)
    labels = [r["spec"]["label"] for r in results["runs"]]
    assert labels == ["cosine", "cosine@lrx0.1", "cosine@lrx1", "cosine@lrx10"]
    assert results["counts"]["executed"] == 3  # cosine and cosine@lrx1 train identically: run once
    lrs = {r["spec"]["label"]: r["lr"] for r in results["runs"]}
    assert lrs["cosine@lrx0.1"] == pytest.approx(1e-4) and lrs["cosine@lrx10"] == pytest.approx(1e-2)
    ref = results["tuned_reference"]["digits_mlp"]
    scores = {row["label"]: row["score"] for row in ref["grid"]}
    assert scores[ref["best_label"]] == max(scores.values())
    assert "Δ val_accuracy vs tuned" in (tmp_path / "results.md").read_text() and "## Tuned reference" in (tmp_path / "results.md").read_text()
    assert results["delta_vs_tuned_pct"]["digits_mlp"]["cosine"] <= 0.0


def test_lr_factors_are_log_uniform() -> None:
    assert TunedConfig(n_lrs=5, factor=10.0).lr_factors() == pytest.approx([0.1, 10**-0.5, 1.0, 10**0.5, 10.0])
    assert TunedConfig(n_lrs=0).lr_factors() == []


def test_a_failing_run_becomes_an_error_record(tmp_path: Path) -> None:
    rec = execute(RunSpec("no_such_task", "constant", "constant", 0), str(tmp_path), tensorboard=False)
    assert rec["status"] == "error" and "no_such_task" in rec["error"]
    assert not (tmp_path / "runs").exists()  # not saved: a resume retries it


@pytest.mark.parametrize(
    "override, message",
    [
        ({"tasks": ["nope"]}, "unknown task(s) ['nope']; valid: "),
        ({"strategies": ["nope"]}, "unknown strategy 'nope'; valid: "),
        ({"strategies": [{"name": "cosine", "controller_kwargs": {"bogus": 1}}]}, "unknown keyword(s) ['bogus']"),
        ({"strategies": [{"name": "cosine", "controller_kwargs": {"warmup_steps": -1}}]}, "cannot be built"),
        ({"strategies": ["cosine", "cosine"]}, "used twice"),
        ({"strategies": [{"name": "cosine", "label": "a/b"}]}, "may only hold"),
        ({"task_overrides": {"digits_mlp": {"lrr": 1}}}, "unknown Task field(s) ['lrr']"),
        ({"tuned": {"strategy": "nope"}}, "tuned.strategy"),
        ({"seeds": []}, "seeds"),
        ({"workers": -1}, "workers"),
        ({"reuse_from": "results/eval_full"}, "reuse_from"),
        ({"reuse_from": [""]}, "reuse_from must be a list of out dirs"),
        ({"meta_checkpoint": "x.safetensors"}, "no strategy is `meta`"),
    ],
)
def test_config_validation_names_the_problem(tmp_path: Path, override: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        _cfg(tmp_path, **override)
    assert message in str(err.value)


def test_script_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("tasks: [digits_mlp]\nstrategies: [constant]\nseeds: [0]\nsteps: 20\neval_every: 10\ntuned: {n_lrs: 0}\n")
    rc = evaluate_script.main(["--config", str(cfg), "--quiet", f"out_dir={tmp_path / 'out'}", "workers=1"])
    out = capsys.readouterr().out
    assert rc == 0 and "results.md" in out and "tensorboard --logdir" in out and "plots" in out
    assert evaluate_script.main(["--config", str(cfg), "tasks=[nope]"]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert evaluate_script.main(["--config", str(cfg), "strategies=[nope]"]) == 2
    assert "unknown strategy" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["eval", "eval_full"])
def test_shipped_configs_are_valid_and_hold_out_the_meta_training_tasks(name: str) -> None:
    from metalr.config import load_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(EvalConfig, root / "configs" / f"{name}.yaml")
    full = load_config(EvalConfig, root / "configs" / "eval_full.yaml", ["validate_build=false"])
    assert {"mnist1d_cnn", "fashion_mnist_mlp", "rt_bilstm", "twitter_ner_bilstm_crf"} <= set(cfg.tasks)
    from metalr.meta.trainer import MetaTrainConfig

    meta_train = load_config(MetaTrainConfig, root / "configs" / "meta_train.yaml")  # refuses held-out data as training families
    assert set(cfg.tasks) <= set(meta_train.held_out)  # every evaluated task is held out from meta-training
    # the quick grid is the full one cut down: same strategies and tasks, a tuned reference and an LR sweep
    assert [s.label for s in cfg.strategies] == [s.label for s in full.strategies] and cfg.tasks == full.tasks
    assert cfg.tuned.n_lrs >= 3 and cfg.sensitivity.enabled and {0.1, 1.0, 10.0} <= set(cfg.sensitivity.multipliers)
    if name == "eval_full":
        assert len(cfg.seeds) >= 3 and cfg.sensitivity.strategies is None and len(cfg.sensitivity.multipliers) >= 5


def test_sigkill_mid_evaluation_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    """A real evaluate.py process killed with SIGKILL after its 2nd of 6 runs; rerunning finishes only the rest."""
    import signal
    import subprocess

    from metalr.testing import PAUSE_ENV, wait_until_paused

    root = Path(__file__).resolve().parents[1]
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(json.dumps({**TINY, "seeds": [0, 1, 2], "steps": 200, "workers": 1, "tensorboard": False, "plots": False}))
    env = {k: v for k, v in os.environ.items() if k != PAUSE_ENV} | {"OMP_NUM_THREADS": "1"}

    def cmd(out: Path) -> list[str]:
        return [sys.executable, str(root / "evaluate.py"), "--config", str(cfg_file), "--quiet", f"out_dir={out}"]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd(killed), env={**env, PAUSE_ENV: "eval_run:2"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_paused(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in (killed / "runs").glob("*.json")}
    assert len(done_before) == 2
    assert not (killed / "results.json").exists()
    subprocess.run(cmd(killed), env=env, check=True, capture_output=True)
    whole = tmp_path / "whole"
    subprocess.run(cmd(whole), env=env, check=True, capture_output=True)
    a, b = json.loads((killed / "results.json").read_text()), json.loads((whole / "results.json").read_text())
    assert a["counts"]["reused"] == 2 and a["counts"]["executed"] == 4
    assert all((killed / "runs" / n).stat().st_mtime_ns == t for n, t in done_before.items())  # finished work kept
    assert len(a["runs"]) == len(b["runs"]) == 6
    for ra, rb in zip(a["runs"], b["runs"]):
        assert ra["id"] == rb["id"] and _untimed(ra["metrics"]) == _untimed(rb["metrics"])


def test_dry_run_prints_the_plan_and_an_estimate_from_earlier_timings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("tasks: [digits_mlp]\nstrategies: [constant]\nseeds: [0]\nsteps: 20\neval_every: 10\ntuned: {n_lrs: 0}\ntensorboard: false\nplots: false\n")
    assert evaluate_script.main(["--config", str(cfg), "--quiet", f"out_dir={tmp_path / 'timed'}", "workers=1"]) == 0
    capsys.readouterr()
    bigger = ["seeds=[0,1]", "strategies=[constant,cosine]", "sensitivity={enabled: true, multipliers: [0.1, 1]}", f"out_dir={tmp_path / 'new'}"]
    assert evaluate_script.main(["--config", str(cfg), "--dry-run", "--timings", str(tmp_path / "timed"), "workers=1", *bigger]) == 0
    out = capsys.readouterr().out
    # 4 main runs + 8 sweep runs, of which the 4 at x1 share the main runs' training
    assert ": 12 runs" in out and "8 distinct trainings" in out and "digits_mlp: 20 steps; main 4, sensitivity 8" in out
    assert "estimated wall time with 1 worker(s): ~" in out and not (tmp_path / "new").exists()


def test_exclude_tasks_leaves_a_strategy_out_of_those_tasks_only(tmp_path: Path) -> None:
    strategies = ["constant", {"name": "cosine", "exclude_tasks": ["digits_mlp"]}]
    cfg = _cfg(tmp_path, tasks=["digits_mlp", "wine_mlp"], strategies=strategies, sensitivity={"enabled": True, "multipliers": [0.1, 1.0]})
    cells = {(s.task, s.controller) for s in build_specs(cfg)}
    assert ("digits_mlp", "cosine") not in cells and ("wine_mlp", "cosine") in cells and ("digits_mlp", "constant") in cells


def test_a_deep_ensemble_of_a_crf_tagger_is_refused_before_training() -> None:
    from metalr import tasks
    from metalr.ensemble import ensemble_task

    with pytest.raises(ValueError, match="CRF"):
        ensemble_task(tasks.build("twitter_ner_bilstm_crf"), 5)
