#!/usr/bin/env bash
# Before/after per-step overhead of two commits, measured alternately on one machine in one sitting:
#
#     bash benchmarks/overhead_ab.sh BEFORE [AFTER=HEAD] [PAIRS=3] [-- controller_overhead.py arguments]
#     bash benchmarks/overhead_ab.sh a600432 HEAD 3 -- --tasks digits_mlp mnist1d_cnn --controllers meta hypergradient grad_variability
#
# Commits, not the working tree: commit first. Each commit is checked out in its own worktree under a temporary folder and imported from there
# (PYTHONPATH), so the installed metalr is not touched. The two run one after the other PAIRS times
# (before, after, before, after, ...), so slow drift of a shared machine reaches both alike; compare
# the medians over the PAIRS runs of each. Run it on a quiet machine.
set -euo pipefail
pos=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do pos+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
args=("$@")
before=${pos[0]:?usage: overhead_ab.sh BEFORE [AFTER] [PAIRS] [-- controller_overhead.py arguments]}
after=${pos[1]:-HEAD}
pairs=${pos[2]:-3}
[ ${#args[@]} -eq 0 ] && args=(--tasks digits_mlp mnist1d_cnn --controllers meta hypergradient grad_variability)
root=$(git rev-parse --show-toplevel)
tmp=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$tmp/before" >/dev/null 2>&1 || true; git -C "$root" worktree remove --force "$tmp/after" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
git -C "$root" worktree add --detach "$tmp/before" "$before" >/dev/null
git -C "$root" worktree add --detach "$tmp/after" "$after" >/dev/null
for i in $(seq "$pairs"); do
  for side in before after; do
    echo "### $side ($(git -C "$tmp/$side" rev-parse --short HEAD)) run $i"
    (cd "$tmp/$side" && PYTHONPATH="$tmp/$side" python benchmarks/controller_overhead.py --repeats 7 "${args[@]}" | grep -v '^# ')
  done
done
