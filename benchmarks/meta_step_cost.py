"""Cost of one meta-training step relative to plain training of the same model.

    python benchmarks/meta_step_cost.py [--K 10 20 50] [--repeats 5] [--device cpu]

A meta-step unrolls K inner SGD steps whose LR comes from a tiny LR-predicting
MLP (features: log loss, step fraction), then back-propagates a validation loss
through all K steps into the MLP's weights. Two implementations of the unroll:

- `higher`: `higher.innerloop_ctx` with `diffopt.step(loss, override={"lr": [lr]})`;
- `func`: a hand-written unroll with `torch.func.functional_call` and
  `torch.autograd.grad(create_graph=True)`.

Both are compared with K plain training steps of the same model (forward, backward,
`torch.optim.SGD.step`). Reported: seconds per meta-step, ratio to K plain steps,
inner steps per second, and peak memory above the setup's (each variant runs in
its own process so the peaks do not mix: max RSS on CPU, the CUDA allocator's
peak on GPU). Self-contained (digits data from scikit-learn, MLP 64-128-10), so
it does not depend on metalr.meta.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("plain", "higher", "func")


class LRPolicy(nn.Module):
    """(log loss, step fraction) -> LR in base * [e^-1, e^1]; a stand-in for the meta-controller."""

    def __init__(self, base_lr: float = 0.1) -> None:
        super().__init__()
        self.base_lr = base_lr
        self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, loss: torch.Tensor, frac: float) -> torch.Tensor:
        feats = torch.stack([loss.detach().clamp_min(1e-8).log(), torch.tensor(frac, device=loss.device)])
        return self.base_lr * torch.exp(torch.tanh(self.net(feats)).squeeze())


def data(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data / 16.0, dtype=torch.float32, device=device), torch.tensor(d.target, device=device)


def batches(x: torch.Tensor, y: torch.Tensor, k: int, bs: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(y), (k + 1, bs), generator=g).to(x.device)
    return [(x[i], y[i]) for i in idx]


def plain_steps(model: nn.Module, policy: LRPolicy, bs_list: list) -> None:  # type: ignore[type-arg]
    opt = torch.optim.SGD(model.parameters(), lr=policy.base_lr)
    for xb, yb in bs_list[:-1]:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        opt.step()


def meta_step_func(model: nn.Module, policy: LRPolicy, bs_list: list) -> None:  # type: ignore[type-arg]
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    k = len(bs_list) - 1
    for t, (xb, yb) in enumerate(bs_list[:-1]):
        loss = F.cross_entropy(torch.func.functional_call(model, params, (xb,)), yb)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        lr = policy(loss, t / k)
        params = {n: p - lr * g for (n, p), g in zip(params.items(), grads)}
    xv, yv = bs_list[-1]
    policy.zero_grad(set_to_none=True)
    F.cross_entropy(torch.func.functional_call(model, params, (xv,)), yv).backward()


def meta_step_higher(model: nn.Module, policy: LRPolicy, bs_list: list) -> None:  # type: ignore[type-arg]
    import higher

    inner = torch.optim.SGD(model.parameters(), lr=policy.base_lr)
    k = len(bs_list) - 1
    with higher.innerloop_ctx(model, inner, copy_initial_weights=True) as (fmodel, diffopt):
        for t, (xb, yb) in enumerate(bs_list[:-1]):
            loss = F.cross_entropy(fmodel(xb), yb)
            diffopt.step(loss, override={"lr": [policy(loss, t / k)]})
        xv, yv = bs_list[-1]
        policy.zero_grad(set_to_none=True)
        F.cross_entropy(fmodel(xv), yv).backward()


def measure(variant: str, k: int, repeats: int, device: str) -> dict[str, float]:
    """Run in its own process: seconds per call (median) and peak memory above the setup."""
    import psutil

    torch.set_num_threads(1)
    dev = torch.device(device)
    torch.manual_seed(0)
    x, y = data(dev)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).to(dev)
    policy = LRPolicy().to(dev)
    fn = {"plain": plain_steps, "higher": meta_step_higher, "func": meta_step_func}[variant]
    fn(model, policy, batches(x, y, 2, 64, 0))  # warm-up (imports, allocator)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
        base_mem = torch.cuda.memory_allocated(dev)
    else:
        base_mem = psutil.Process().memory_info().rss
    times = []
    for r in range(repeats):
        bs_list = batches(x, y, k, 64, r + 1)
        start = time.perf_counter()
        fn(model, policy, bs_list)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if variant != "plain":
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in policy.parameters()), "meta-gradient missing"
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": statistics.median(times), "peak_mb": max(0.0, (peak - base_mem) / 2**20)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--K", type=int, nargs="+", default=[10, 20, 50])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--one", nargs=2, metavar=("VARIANT", "K"), help=argparse.SUPPRESS)  # child process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.repeats, args.device)))
        return
    print(f"# device {args.device}, torch {torch.__version__}, 1 intra-op thread, MLP 64-128-10 on digits, batch 64, median of {args.repeats}")
    print(f"{'K':>4} {'variant':<8} {'s/meta-step':>12} {'x K plain':>10} {'inner steps/s':>14} {'peak MB':>8}")
    for k in args.K:
        res = {}
        for v in VARIANTS:
            out = subprocess.run(
                [sys.executable, __file__, "--one", v, str(k), "--repeats", str(args.repeats), "--device", args.device], capture_output=True, text=True
            )
            if out.returncode != 0:
                print(f"{k:>4} {v:<8} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
                continue
            res[v] = json.loads(out.stdout.strip().splitlines()[-1])
        for v, r in res.items():
            ratio = r["seconds"] / res["plain"]["seconds"] if "plain" in res else float("nan")
            print(f"{k:>4} {v:<8} {r['seconds']:12.4f} {ratio:10.2f} {k / r['seconds']:14.1f} {r['peak_mb']:8.1f}")


if __name__ == "__main__":
    main()
