"""What the tests and benchmarks share: smoke-test settings and a deterministic pause point.

`smoke_kwargs(name)` gives the one set of constructor arguments that make a
registered controller quick to exercise (its rule fires within a few steps,
its estimates are cheap). Every test and `benchmarks/controller_overhead.py`
read it (the benchmark without the cheap-estimate part); a new controller that
needs arguments gets one line here.

`TokenData(n, seed)`: random token sequences for a tiny HF model (the Trainer tests and `scripts/ddp_check.py`).

`leave_process()` ends a data-parallel worker (the tests' gloo workers, `scripts/ddp_check.py`) once its work is
written and its process group is down, without the interpreter's finalisation: there gloo's threads aborted a rank
('terminate called without an active exception', SIGABRT) after both ranks had written their results and taken the
group down, once in CI and in 1 of 25 runs here under load (0 of 40 with this exit).

`pause_point(event, n)` lets a test kill a real process at a known point rather
than after a sleep: when the environment variable `METALR_TEST_PAUSE_AT` equals
`"<event>:<n>"`, the process announces it on stderr and stops itself with
SIGSTOP; `wait_until_paused(proc)` in the test returns once it has stopped, and
the test then SIGKILLs it. With the variable unset the call is one dict lookup.
Points in the code: `meta_checkpoint:<meta-step>` (after a training checkpoint
of `train_meta.py` is written) and `eval_run:<k>` (after the k-th run record of
an evaluation is written, by the process that ran it, i.e. with `workers=1`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import torch

PAUSE_ENV = "METALR_TEST_PAUSE_AT"


@contextlib.contextmanager
def count_cuda_syncs() -> Iterator[list[str]]:
    """Record every host-device synchronisation CUDA reports inside the block (`torch.cuda.set_sync_debug_mode("warn")`;
    the mode's own one-time notice that it is a prototype is not counted)."""
    import torch

    seen: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield seen
        finally:
            torch.cuda.set_sync_debug_mode("default")
    seen.extend(m for m in map(str, (w.message for w in caught)) if "synchroniz" in m and "prototype" not in m)


#: Rule settings that make each controller move its LR within a few steps; they do not change a
#: step's cost, so the overhead benchmark uses them too.
RULE_KWARGS: dict[str, dict[str, Any]] = {
    "cosine": {"warmup_steps": 5},
    "exponential": {"gamma": 0.9},
    "step": {"step_size": 3, "gamma": 0.5},
    "plateau": {"patience": 1, "factor": 0.5},
    "loss_patterns": {"interval_steps": 2, "window": 3},
    # calibrated variants: a short history (and window), so a few readings reach their decisions
    "uncertainty_relative": {"history": 2},
    "uncertainty_ensemble_relative": {"history": 2},
    "grad_variability_relative": {"window": 2, "interval": 1, "history": 2},
    "loss_patterns_relative": {"interval_steps": 2, "window": 3},
}
#: Cheap, frequent estimates for tests (small probe batch, few passes, 2 members). Never timed:
#: they would undercut what the defaults cost.
QUICK_KWARGS: dict[str, dict[str, Any]] = {
    "uncertainty": {"interval": 2, "probe_size": 32, "passes": 8},
    "uncertainty_ensemble": {"interval": 2, "probe_size": 32, "n_members": 2},
    "uncertainty_relative": {"interval": 2, "passes": 8},
    "uncertainty_ensemble_relative": {"interval": 2, "n_members": 2},
    "resource_aware": {"interval_steps": 3},
}


def smoke_kwargs(name: str, *, quick: bool = True, **overrides: Any) -> dict[str, Any]:
    """A fresh dict of controller `name`'s smoke-test arguments (RULE_KWARGS, plus QUICK_KWARGS if `quick`), updated by `overrides`."""
    return {**RULE_KWARGS.get(name, {}), **(QUICK_KWARGS.get(name, {}) if quick else {}), **overrides}


def pause_point(event: str, n: int) -> None:
    """Stop this process (SIGSTOP) if `METALR_TEST_PAUSE_AT` is `"<event>:<n>"`; otherwise do nothing."""
    if os.environ.get(PAUSE_ENV) != f"{event}:{n}":
        return
    print(f"metalr: paused at {event}:{n} ({PAUSE_ENV})", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)


def wait_until_paused(proc: subprocess.Popen[Any], timeout: float = 300.0) -> None:
    """Block until `proc` has stopped itself at its pause point; raise if it exits or hangs instead.

    Polls `waitpid(WUNTRACED)`, which reports the stop without reaping the
    process, so `proc.kill()` / `proc.wait()` work as usual afterwards.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status = os.waitpid(proc.pid, os.WNOHANG | os.WUNTRACED)
        if pid and os.WIFSTOPPED(status):
            return
        if pid:  # exited or was killed: it never reached the pause point
            proc.returncode = os.waitstatus_to_exitcode(status)
            raise AssertionError(f"process exited with {proc.returncode} before its pause point ({PAUSE_ENV})")
        time.sleep(0.02)
    raise AssertionError(f"process did not reach its pause point within {timeout:.0f} s")


class TokenData(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Random token sequences (16 tokens of a 100-word vocabulary) in the HF format; label = whether token 7 occurs
    (learnable, deterministic)."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 100, (n, 16), generator=g)
        self.labels = (self.ids == 7).any(dim=1).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(16, dtype=torch.long), "labels": self.labels[i]}


def plain_loop_lrs(ctrl: Any, opt: Any, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[list[float]]:
    """The README's plain loop (`metalr.hook`'s one added line) with optimizer `opt` (as the user holds it: a wrapper is
    stepped as such) on the full batch (x, y) for `steps` steps: each step's LRs, one per param group, as `ctrl.step(loss)`
    returns them."""
    lrs = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lrs.append(ctrl.step(loss))
    return lrs


def leave_process() -> None:
    """Flush stdout and stderr and exit with status 0 without the interpreter's finalisation (see module docstring).
    Call it last, after the process group is destroyed: an exception before it still fails the worker."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
