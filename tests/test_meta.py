"""The meta-learned controller: meta-gradients, meta-training, checkpoints, resume, distributed."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from metalr import controllers, load_pretrained  # noqa: E402
from metalr.meta.checkpoint import CheckpointError, read_policy, save_policy  # noqa: E402
from metalr.meta.features import FEATURE_NAMES, FeatureState  # noqa: E402
from metalr.meta.policy import MetaPolicy  # noqa: E402
from metalr.meta.tasks import TaskSpec, materialise  # noqa: E402
from metalr.meta.trainer import MetaTrainConfig, meta_step  # noqa: E402
from metalr.meta.unroll import start, truncation  # noqa: E402
from metalr.signals import Signals  # noqa: E402
from metalr.testing import PAUSE_ENV, wait_until_paused  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(meta_batch=2, truncation=10, val_every=5, val_batch=64, tasks=["synthetic_blobs"], steps=[20], widths=[16], progress=False)


def tiny_cfg(**kw: object) -> MetaTrainConfig:
    return MetaTrainConfig(**{**TINY, **kw})  # type: ignore[arg-type]


def test_meta_gradient_reaches_every_parameter_and_is_finite() -> None:
    torch.manual_seed(0)
    policy = MetaPolicy()
    traj = start(materialise(TaskSpec("synthetic_blobs", "sgd", 0.05, 16, 1.0, 20, 32, 3)), 64)
    total, n = truncation(traj, policy, 20, 5, (math.log(0.01), math.log(5.0)))
    assert n == 4 and total.requires_grad
    total.backward()
    for name, p in policy.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0, f"no meta-gradient reaches {name}"


def test_meta_gradient_matches_finite_differences_on_last_bias() -> None:
    """d(meta-loss)/d(output bias) by autograd vs a central difference (same seeded task)."""
    torch.manual_seed(0)
    policy = MetaPolicy().double()
    spec = TaskSpec("synthetic_blobs", "sgd", 0.05, 16, 1.0, 10, 32, 5)

    def meta_loss() -> torch.Tensor:
        task = materialise(spec)
        task.model.double()
        task.x_train, task.x_val = task.x_train.double(), task.x_val.double()
        total, _ = truncation(start(task, 64), policy, 10, 5, (math.log(0.01), math.log(5.0)))
        return total

    bias = policy.net[-1].bias
    meta_loss().backward()
    analytic = float(bias.grad[0])
    eps = 1e-4
    with torch.no_grad():
        bias += eps
    up = float(meta_loss().detach())
    with torch.no_grad():
        bias -= 2 * eps
    down = float(meta_loss().detach())
    numeric = (up - down) / (2 * eps)
    assert analytic != 0.0
    assert abs(analytic - numeric) <= 1e-3 * max(1.0, abs(numeric)), (analytic, numeric)


def test_short_meta_training_lowers_meta_loss_on_a_fixed_task() -> None:
    """LR far too small: a few meta-steps must teach the policy to raise it (lower val loss)."""
    cfg = tiny_cfg(meta_lr=0.01, optimizers=["sgd"], base_lrs={"sgd": 0.05}, lr_factor_range=[0.05, 0.05], steps=[40], max_log_step=0.1)
    spec = TaskSpec("synthetic_blobs", "sgd", 0.0025, 16, 1.0, 40, 32, 12345)

    def fixed_loss(policy: MetaPolicy) -> float:
        traj, out, n = start(materialise(spec), 64), 0.0, 0
        while not traj.done:
            total, k = truncation(traj, policy, cfg.truncation, cfg.val_every, cfg.log_bounds)
            out, n = out + float(total.detach()), n + k
        return out / n

    torch.manual_seed(0)
    policy = MetaPolicy(max_log_step=cfg.max_log_step)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.meta_lr)
    before = fixed_loss(policy)
    for s in range(6):
        meta_step(policy, opt, cfg, s)
    after = fixed_loss(policy)
    assert after < before - 0.01, (before, after)


# ------------------------------------------------------------------ checkpoints
def _saved(tmp_path: Path) -> tuple[Path, MetaPolicy]:
    torch.manual_seed(1)
    pol = MetaPolicy()
    path = tmp_path / "p.safetensors"
    save_policy(path, pol, min_factor=0.01, max_factor=5.0, config={"seed": 1})
    return path, pol


def test_load_pretrained_round_trip(tmp_path: Path) -> None:
    path, pol = _saved(tmp_path)
    frozen = read_policy(path)
    for (k, a), (_, b) in zip(pol.state_dict().items(), frozen.policy.state_dict().items()):
        assert torch.equal(a, b), k
    assert frozen.metadata["feature_names"] == list(FEATURE_NAMES) and frozen.metadata["config"] == {"seed": 1}
    assert (tmp_path / "p.json").is_file()
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    ctrl = load_pretrained(str(path), optimizer=opt, total_steps=10)
    ctrl2 = controllers.build("meta", torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1), checkpoint=str(path), total_steps=10)
    s = Signals(step=1, loss=2.0, accuracy=0.3, grad_norm=1.0, grad_cos=0.1)
    assert ctrl.step(s) == ctrl2.step(s)


def _header(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata())


def _rewrite_meta(path: Path, out: Path, **changes: object) -> None:
    from safetensors.torch import load, save

    meta = json.loads(_header(path)["metalr"])
    meta.update(changes)
    out.write_bytes(save(load(path.read_bytes()), metadata={"metalr": json.dumps(meta)}))


def test_refuses_mismatched_or_corrupt_files(tmp_path: Path) -> None:
    from safetensors.torch import save

    path, pol = _saved(tmp_path)
    bad = tmp_path / "bad.safetensors"
    _rewrite_meta(path, bad, feature_names=["loss_rel", "something_else"])
    with pytest.raises(CheckpointError, match="features"):
        read_policy(bad)
    _rewrite_meta(path, bad, format_version=99)
    with pytest.raises(CheckpointError, match="format_version"):
        read_policy(bad)
    bad.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # truncated
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_policy(bad)
    bad.write_bytes(b"\x80\x04garbage, maybe a pickle")
    with pytest.raises(CheckpointError):
        read_policy(bad)
    tensors = {k: v.clone() for k, v in pol.state_dict().items()}
    tensors["net.0.weight"] = torch.zeros(64, 3)
    header = _header(path)
    bad.write_bytes(save(tensors, metadata=header))
    with pytest.raises(CheckpointError, match="wrong shape"):
        read_policy(bad)
    tensors = {k: v.clone() for k, v in pol.state_dict().items()}
    tensors["net.4.bias"] = torch.tensor([math.nan])
    bad.write_bytes(save(tensors, metadata=header))
    with pytest.raises(CheckpointError, match="non-finite"):
        read_policy(bad)
    with pytest.raises(FileNotFoundError):
        read_policy(tmp_path / "missing.safetensors")


def test_controller_is_safe_on_nan_and_inf_signals(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path)
    opt = torch.optim.Adam(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    ctrl = controllers.build("meta", opt, checkpoint=str(path), total_steps=50)
    for i in range(50):
        v = [math.nan, math.inf, -math.inf, 1e308, None][i % 5]
        lr = ctrl.step(Signals(step=i + 1, loss=v, accuracy=v, grad_norm=v, grad_cos=v))[0]
        assert math.isfinite(lr) and 1e-3 * 0.01 <= lr <= 1e-3 * 5.0
    assert all(math.isfinite(x) for x in FeatureState(loss0=1.0, loss_ema=math.inf).features(math.nan, math.nan))


def test_config_refuses_held_out_tasks_and_bad_values() -> None:
    with pytest.raises(ValueError, match="both meta-trained on and held out"):
        tiny_cfg(tasks=["digits_mlp"], held_out=["digits_mlp"])
    with pytest.raises(ValueError, match="valid"):
        tiny_cfg(tasks=["mnist1d_cnn"])
    with pytest.raises(ValueError, match="AdamW"):
        tiny_cfg(optimizers=["adamw"])


# --------------------------------------------------------------- kill and resume
def _run_script(out: Path, *extra: str, pause_at: str | None = None) -> subprocess.Popen[bytes]:
    args = [f"{k}={v}" for k, v in TINY.items() if k not in ("tasks", "steps", "widths")]
    args += [
        "tasks=[synthetic_blobs]",
        "steps=[20]",
        "widths=[16]",
        "meta_steps=8",
        "checkpoint_every=1",
        f"out_dir={out}",
        "export_path=",
    ]  # never touch the shipped checkpoint
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(PAUSE_ENV, None)
    if pause_at:
        env[PAUSE_ENV] = pause_at
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train_meta.py"), "--config", str(ROOT / "configs/meta_train.yaml"), *args, *extra],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _policy_tensors(path: Path) -> dict[str, torch.Tensor]:
    return read_policy(path).policy.state_dict()


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    """Killed right after its 3rd checkpoint (of 8 meta-steps), resumed: the same policy as a run never killed."""
    full = _run_script(tmp_path / "full")
    killed = _run_script(tmp_path / "killed", pause_at="meta_checkpoint:3")
    wait_until_paused(killed)
    assert (tmp_path / "killed" / "train_state.safetensors").is_file()
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "policy.safetensors").exists()
    resumed = _run_script(tmp_path / "killed", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode() if resumed.stderr else ""
    assert full.wait(timeout=300) == 0
    history = json.loads((tmp_path / "killed" / "history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, 9))  # steps 4..8 ran after the resume, none twice
    a, b = _policy_tensors(tmp_path / "full" / "policy.safetensors"), _policy_tensors(tmp_path / "killed" / "policy.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------ distributed
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    policy = MetaPolicy()
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    meta_step(policy, opt, tiny_cfg(), 0, rank, world)
    if rank == 0:
        torch.save({k: v.clone() for k, v in policy.state_dict().items()}, out)  # test-only file, read with weights_only
    dist.barrier()  # no rank may tear down gloo while the other still uses it
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_update_equals_single_process(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    out = tmp_path / "dist.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    torch.manual_seed(0)
    policy = MetaPolicy()
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    meta_step(policy, torch.optim.Adam(policy.parameters(), lr=1e-3), replace(tiny_cfg()), 0)
    dist_state = torch.load(out, weights_only=True)
    changed = False
    for k, v in policy.state_dict().items():
        torch.testing.assert_close(dist_state[k], v, rtol=1e-5, atol=1e-7)
        changed |= not torch.equal(v, before[k])
    assert changed, "the meta-step did not change the policy"
