"""Data-parallel runs (`metalr.distributed`): every rank's controller sets the same LR.

Two CPU processes under a gloo process group train one model with DistributedDataParallel, each on its own data, as a
user's `torchrun` job would. The gradients are all-reduced by DDP; the loss is not, so without the tracker's average
a loss-reading controller sets a different LR on each rank and the replicas drift apart. One spawn runs the
in-process scenarios (the tests read what each rank wrote); the last two tests run `scripts/ddp_check.py` with a real
HF Trainer (under torchrun, with a checkpoint resume) and Lightning (its ddp strategy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import metalr
from metalr.distributed import RankMean, world_size
from metalr.signals import SignalTracker
from metalr.testing import leave_process

STEPS = 48


def _model() -> torch.nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank
    return torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))


def _data(rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
    x = torch.randn(512, 20, generator=g)
    return x, (x.sum(1) > 0).long(), g


def _hook_run(rank: int, name: str, **kwargs: Any) -> dict[str, Any]:
    """The README's plain loop under DDP, through `metalr.hook`."""
    model = _model()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(ddp.parameters(), lr=3e-2)
    ctrl = metalr.hook(name, opt, total_steps=STEPS, **kwargs)
    x, y, g = _data(rank)
    lrs = []
    for i in range(STEPS):
        idx = torch.randint(0, len(x), (16,), generator=g)
        loss = torch.nn.functional.cross_entropy(ddp(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        lrs.append(ctrl.step(loss)[0])
        if name == "plateau" and i % 8 == 7 and rank == 0:  # an evaluation on rank 0 only
            ctrl.record_eval(val_loss=1.0 + (i % 16), val_accuracy=None)
    return {"lrs": lrs, "params": [float(p.detach().double().sum()) for p in model.parameters()]}


def _long_form_run(rank: int, sync_ranks: bool | None, as_tensors: bool) -> dict[str, Any]:
    """The long form (tracker.collect + controller.step), the meta-controller, with the tracker's options given."""
    model = _model()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    ctrl = metalr.load_pretrained(optimizer=opt, total_steps=STEPS)
    tracker = SignalTracker(
        ddp.parameters(), opt, requires=ctrl.requires, total_steps=STEPS, every=ctrl.signal_every, as_tensors=as_tensors, sync_ranks=sync_ranks
    )
    x, y, g = _data(rank)
    lrs, local, seen = [], [], []
    for _ in range(STEPS):
        idx = torch.randint(0, len(x), (16,), generator=g)
        loss = torch.nn.functional.cross_entropy(ddp(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        s = tracker.collect(loss=loss)
        local.append(float(loss))
        seen.append((type(s.loss).__name__, float(s.loss)))
        opt.step()
        lrs.append(ctrl.step(s)[0])
    return {"lrs": lrs, "local": local, "seen": seen, "params": [float(p.detach().double().sum()) for p in model.parameters()]}


def _worker(rank: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        res = {
            "world": world_size(),
            "meta": _hook_run(rank, "pretrained"),
            "plateau": _hook_run(rank, "plateau", patience=0),
            "cosine_ranks": RankMean.build(frozenset(), None) is None,
            "synced": _long_form_run(rank, None, False),
            "tensors": _long_form_run(rank, None, True),
            "unsynced": _long_form_run(rank, False, False),
        }
        Path(out, f"rank{rank}.json").write_text(json.dumps(res))
    finally:
        dist.destroy_process_group()
    leave_process()  # (gloo can abort a rank in the interpreter's finalisation: see metalr.testing)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    d = tmp_path_factory.mktemp("ddp")
    ctx = mp.spawn(_worker, args=(f"file://{d / 'store'}", str(d)), nprocs=2, join=False)
    while not ctx.join(timeout=600):  # (a bound on a hang, not a wait for progress: join returns when both exit)
        pass
    return [json.loads((d / f"rank{r}.json").read_text()) for r in range(2)]


def test_the_meta_controller_sets_the_same_lrs_on_every_rank_and_the_replicas_stay_equal(ranks: list[dict[str, Any]]) -> None:
    r0, r1 = ranks[0]["meta"], ranks[1]["meta"]
    assert ranks[0]["world"] == 2
    assert len(set(r0["lrs"])) > 3  # it moved the LR
    assert r0["lrs"] == r1["lrs"]
    assert r0["params"] == r1["params"]


def test_without_the_average_each_rank_sets_its_own_lr(ranks: list[dict[str, Any]]) -> None:
    """What the average prevents (and what makes the test above able to fail): the ranks' losses differ, and so do
    the LRs and then the weights."""
    r0, r1 = ranks[0]["unsynced"], ranks[1]["unsynced"]
    assert r0["local"] != r1["local"]
    assert r0["lrs"] != r1["lrs"]
    assert r0["params"] != r1["params"]


def test_the_controller_reads_the_mean_of_the_ranks_losses(ranks: list[dict[str, Any]]) -> None:
    for key in ("synced", "tensors"):
        r0, r1 = ranks[0][key], ranks[1][key]
        assert r0["lrs"] == r1["lrs"] and r0["params"] == r1["params"]
        for (kind0, seen0), (kind1, seen1), a, b in zip(r0["seen"], r1["seen"], r0["local"], r1["local"]):
            assert seen0 == seen1 == pytest.approx((a + b) / 2, rel=1e-6)
            assert kind0 == kind1 == ("Tensor" if key == "tensors" else "float")  # a device tensor stays a tensor (no read)
    # same data, same model: the host and the tensor path give the same run (their gradient statistics differ in rounding)
    assert ranks[0]["synced"]["lrs"] == pytest.approx(ranks[0]["tensors"]["lrs"], rel=1e-5)


def test_an_evaluation_on_one_rank_reaches_every_rank(ranks: list[dict[str, Any]]) -> None:
    r0, r1 = ranks[0]["plateau"], ranks[1]["plateau"]
    assert r0["lrs"] == r1["lrs"]
    assert min(r0["lrs"]) < r0["lrs"][0]  # rank 0's rising val losses cut the LR, on rank 1 too
    assert r0["params"] == r1["params"]


def test_a_schedule_communicates_nothing(ranks: list[dict[str, Any]]) -> None:
    assert ranks[0]["cosine_ranks"] and ranks[1]["cosine_ranks"]


def test_a_single_process_builds_no_average() -> None:
    assert world_size() == 1
    assert RankMean.build(frozenset({"loss"}), None) is None
    assert RankMean.build(frozenset({"loss"}), True) is None  # one rank: nothing to average


def _ddp_check(tmp_path: Path, *command: str) -> str:
    """`scripts/ddp_check.py` as a user runs it; what it prints."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, *command], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_an_hf_trainer_under_torchrun_sets_the_same_lr_on_both_ranks(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    printed = _ddp_check(tmp_path, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "scripts/ddp_check.py", "hf", str(tmp_path / "hf"))
    line = next(line for line in printed.splitlines() if line.startswith("LRs differ"))
    assert line.startswith("LRs differ at 0 of 60 steps")
    assert "the last 20 LRs equal the uninterrupted run's: True; same weights: True" in printed  # resumed from its checkpoint
    a, b = line.split("weight sums ")[1].split(" / ")
    assert a == b


def test_lightning_ddp_sets_the_same_lr_on_both_ranks(tmp_path: Path) -> None:
    pytest.importorskip("lightning.pytorch")
    line = next(line for line in _ddp_check(tmp_path, "scripts/ddp_check.py", "lightning", str(tmp_path / "pl")).splitlines() if line.startswith("LRs differ"))
    assert line.startswith("LRs differ at 0 of 96 steps")
    a, b = line.split("weight sums ")[1].split(" / ")
    assert a == b


def test_leave_process_flushes_what_was_printed_and_exits_zero_and_an_error_before_it_still_fails() -> None:
    code = "import sys; from metalr.testing import leave_process; sys.stdout.write('done'); sys.stderr.write('err'); {}leave_process()"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered, as a torchrun worker's pipe is
    out = subprocess.run([sys.executable, "-c", code.format("")], capture_output=True, text=True, timeout=120, env=env)
    assert (out.returncode, out.stdout, out.stderr) == (0, "done", "err")  # flushed by leave_process: buffered writes are not lost to os._exit
    out = subprocess.run([sys.executable, "-c", code.format("1/0; ")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "ZeroDivisionError" in out.stderr
