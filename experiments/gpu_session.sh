#!/usr/bin/env bash
# All three benchmarks in one call on a GPU machine (issue 5), JSON + tables into $OUT (or
# experiments/results/). Budgeted for one 10-minute device call: each benchmark has a timeout.
#
#   Here:  pip download --no-deps -d wheels clu ml_collections wrapt PyYAML  (wheels/ git-ignored)
#   There: bash experiments/gpu_session.sh "H100 SXM"       (carry: wheels)
set -u
kind="${1:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)}"
out="${OUT:-experiments/results}"
mkdir -p "$out"
if [ -d wheels ]; then
  python -m pip install -q --no-deps wheels/*.whl || echo "wheel install failed"
fi
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv 2>/dev/null | tee "$out/gpu.txt"
python -c "import jax; print(jax.__version__, jax.devices())"
tag=$(echo "$kind" | tr 'A-Z ' 'a-z_' | tr -cd 'a-z0-9_')
timeout 200 python experiments/benchmark_train.py --device_kind "$kind" \
  --out "$out/train_${tag}.json" 2>&1 | tail -30
timeout 200 python experiments/benchmark_fid.py --device_kind "$kind" \
  --out "$out/fid_${tag}.json" 2>&1 | tail -30
timeout 150 python experiments/benchmark_loop.py --device_kind "$kind" \
  --out "$out/loop_${tag}.json" 2>&1 | tail -20
ls -la "$out"
