#!/usr/bin/env bash
# The one prepared GPU check for a session that is lent a device machine (docs/benchmarks.md,
# "GPU"): run from the repository root through the device tool, e.g.
#   run(command="bash bench/device_check.sh", timeout_s=540)
# It needs no install there (the machine's python3 has torch, torchvision, tqdm, matplotlib,
# scikit-learn, PyYAML); every part has its own time limit, and the outputs land in $OUT.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
PY=python3
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/gpu.txt"
# 1. CUDA-only tests (the common-random-numbers CUDA generator path), skipped on CPU
timeout 90 $PY -m pytest -q -p no:cacheprovider tests/test_randomness.py 2>&1 | tail -n 5 \
  | tee "$OUT/tests.txt"
# 2. one architect step per estimator and product mode (CUDA events, peak allocated)
timeout 150 $PY bench/step_cost.py --device cuda --C 16 --batch 64 --size 32 --rounds 3 2>&1 \
  | tee "$OUT/step_cost.txt"
# 3. a 2-epoch `darts-amend search` on the darts space, FakeData at CIFAR size, peak memory
# (1,280 images, 10 steps an epoch: the three estimators fit in the limit; at 2,560 images only
# first_order did, on an H200 on 2026-12-04)
timeout 260 $PY bench/search_peak.py --device cuda --fake_size 1280 2>&1 | tee "$OUT/search_peak.txt"
# 4. where a first-order search step spends its time (1.37 s a step on an H200, 2026-12-04,
# against 70 ms for the bare architect step of part 2), cudnn.benchmark on: a profiled run (3 steps
# in profile.txt), then a plain one to hold against part 3's first_order row
timeout 150 $PY bench/search_peak.py --device cuda --fake_size 1280 --estimators first_order first_order \
  --cudnn_benchmark --profile "$OUT/profile.txt" 2>&1 | tee "$OUT/search_cudnn.txt"
