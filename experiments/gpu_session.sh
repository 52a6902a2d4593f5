#!/usr/bin/env bash
# Issue 5's benchmarks and a profile in one call on a GPU machine; JSON, tables and logs go to
# $OUT (or experiments/results/). Budgeted for one device call of under 10 minutes: every part
# has its own timeout, the most important first.
#
#   Here:  pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl clu ml_collections
#          (the GPU image has jax, flax, optax, orbax, torch but not clu/ml_collections; .whl/ is
#          git-ignored). Optional: a copy of an older dcgan_jax in .baseline/dcgan_jax, to time
#          the step before a change in the same run (git archive REV dcgan_jax | tar -x -C .baseline).
#   There: bash experiments/gpu_session.sh "H100 SXM"      (carry: .whl, .baseline)
set -u
export PYTHONUNBUFFERED=1
kind="${1:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)}"
out="${OUT:-experiments/results}"
mkdir -p "$out"
py=python3
site=/tmp/dcgan_site
if [ -d .whl ]; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl || echo "wheel install failed"
fi
export PYTHONPATH="$PWD:$site"
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
$py -c "import jax, flax, optax, orbax.checkpoint as o, numpy; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'numpy', numpy.__version__, jax.devices())" 2>&1 | tee -a "$out/gpu.txt"
tag=$(echo "$kind" | tr 'A-Z ' 'a-z_' | tr -cd 'a-z0-9_')
log="$out/session_${tag}.log"
run() {  # run SECONDS CMD...: one part under a timeout, output to the log and the reply.
  local t=$1; shift
  echo "=== $(date -u +%H:%M:%S) $*" | tee -a "$log"
  timeout "$t" "$@" 2>&1 | grep -v "^WARNING: All log messages before absl" | tee -a "$log" | tail -40
  echo "=== exit ${PIPESTATUS[0]}" | tee -a "$log"
}
# XLA option sets tried beside the defaults (same process, same anchor), most promising first
# (a part cut off by its timeout keeps the rows it measured). Since version 11 the step's
# default on CUDA ('auto', parallel.CUDA_COMPILER_OPTIONS) is conv_graphs: cuDNN convolution
# thunks recorded into XLA's CUDA graphs too (command buffer type CONVOLUTION).
#   conv_graphs: the same set spelt out (the default's row again: run-to-run spread).
#   xla_graphs: XLA's own default set (what the default gains). conv_graphs1: with graphs of
#   any size. conv_while: with the fused loop's while/conditional recorded too.
#   conv_fusion: convolutions as cuDNN fusions. no_graphs: without CUDA graphs.
#   nhwc: float32 convolutions in NHWC, as the input arrives (XLA's heuristic gives cuDNN NCHW
#   unless the type is 16-bit; bfloat16 is NHWC already, so this is the float32 rows' question).
#   conv_concurrent: conv_graphs whose independent small kernels may run side by side inside a
#   graph (command buffer scheduling CONCURRENT_REGIONS; XLA's default, LHS, keeps them in
#   order). Rows measured in version 10 (conv_graphs1, conv_fusion, no_graphs) come last: a
#   cut there loses nothing new.
#   An option this jaxlib does not know fails alone, as a row with its error.
cmd_conv="FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONVOLUTION"
cmd_xla="FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN"
graphs='"xla_gpu_enable_command_buffer": "'$cmd_conv'"'
concurrent='"xla_gpu_command_buffer_scheduling_mode": "CONCURRENT_REGIONS"'
step_variants='{"conv_graphs": {'$graphs'}, "nhwc": {'$graphs', "xla_gpu_force_conv_nhwc": true}, "conv_concurrent": {'$graphs', '$concurrent'}, "xla_graphs": {"xla_gpu_enable_command_buffer": "'$cmd_xla'"}, "conv_while": {"xla_gpu_enable_command_buffer": "'$cmd_conv',WHILE,CONDITIONAL"}, "conv_graphs1": {'$graphs', "xla_gpu_graph_min_graph_size": 1}, "conv_fusion": {"xla_gpu_experimental_enable_conv_fusion": true}, "no_graphs": {"xla_gpu_enable_command_buffer": ""}}'
# Batch 1024, bfloat16 (3.07x, the narrowest met target): GPU-bound, so graphs matter little;
# concurrent scheduling may overlap each layer's independent input and kernel gradients.
step1024_variants='{"conv_concurrent": {'$graphs', '$concurrent'}, "conv_concurrent_all": {'$graphs', "xla_gpu_command_buffer_scheduling_mode": "CONCURRENT"}}'
# The Inception program: conv_graphs gained 1.4% (0.2% on the merged form) in version 11.
# At batch 50 the 17x17 and 8x8 blocks' branches are independent chains of small convolutions:
# conv_concurrent lets them share the GPU (CONCURRENT_REGIONS: small kernels side by side,
# large ones in order; conv_concurrent_all: CONCURRENT, any independent kernels). nhwc: the
# whole float32 network in NHWC (no layout changes around cuDNN's TF32 kernels);
# nhwc_concurrent: both (only one XLA set joins the combined row).
inc_variants='{"conv_concurrent": {'$graphs', '$concurrent'}, "nhwc": {"xla_gpu_force_conv_nhwc": true}, "nhwc_concurrent": {'$graphs', '$concurrent', "xla_gpu_force_conv_nhwc": true}, "conv_concurrent_all": {'$graphs', "xla_gpu_command_buffer_scheduling_mode": "CONCURRENT"}, "conv_graphs": {'$graphs'}}'
# Inception forms tried beside the default (merged sibling 1x1 convolutions since version 11):
# the average-pool branches' 1x1 convolutions merged too (version 14), as written (unmerged),
# RGB input padded to 4 channels (pad4 and pad8 lost 1-2% in version 10).
inc_network='poolmerged,unmerged,pad4'
# Model options tried the same way: the default pads RGB to 8 in bfloat16 (version 11);
# pad1 is the unpadded form, i.e. what that gains.
model_variants='{"pad1": {"image_channel_multiple": 1}}'
loop_variants='{"conv_graphs": {'$graphs'}, "conv_while": {"xla_gpu_enable_command_buffer": "'$cmd_conv',WHILE,CONDITIONAL"}}'
parts="${PARTS:-train profile fid profinc loop loopN profloop xla profpad fidx ckpt baseline}"  # Which parts, in order (PARTS=... to pick).
for part in $parts; do
  case $part in
    train) run "${T_TRAIN:-170}" $py experiments/benchmark_train.py ${BENCH_ARGS:-} ${TRAIN_ARGS:-} \
             --device_kind "$kind" --out "$out/train_${tag}.json" ;;
    profile) run "${T_PROFILE:-80}" $py experiments/profile_step.py ${BENCH_ARGS:-} \
             ${PROFILE_ARGS:-} --out_dir /tmp/profile ;;
    profpad) run "${T_PROFILE:-80}" $py experiments/profile_step.py ${BENCH_ARGS:-} --dtypes bfloat16 \
             --image_channel_multiple 8 --out_dir /tmp/profile ;;
    profinc) run "${T_PROFINC:-60}" $py experiments/profile_step.py --model inception --batch 50 \
             ${PROFINC_ARGS:-} --out_dir /tmp/profile ;;
    fid) run "${T_FID:-130}" $py experiments/benchmark_fid.py ${BENCH_ARGS:-} ${FID_ARGS:-} \
             --device_kind "$kind" --out "$out/fid_${tag}.json" ;;
    fidx) run "${T_FIDX:-200}" $py experiments/benchmark_fid.py ${BENCH_ARGS:-} --batch_sizes 50 \
             --fid_n 0 --xla_variants "${INC_VARIANTS:-$inc_variants}" \
             --network_variants "${INC_NETWORK:-$inc_network}" --no-unfolded \
             --device_kind "$kind" --out "$out/fid_xla_${tag}.json" ;;
    loop) run "${T_LOOP:-100}" $py experiments/benchmark_loop.py ${BENCH_ARGS:-} ${LOOP_ARGS:-} \
             --xla_variants "${LOOP_VARIANTS:-$loop_variants}" \
             --device_kind "$kind" --out "$out/loop_${tag}.json" ;;
    xla) run "${T_XLA:-150}" $py experiments/benchmark_train.py ${BENCH_ARGS:-} --batch_sizes 128 \
             --dtypes bfloat16,float32 --xla_variants "${STEP_VARIANTS:-$step_variants}" \
             --model_variants "${MODEL_VARIANTS:-$model_variants}" \
             --device_kind "$kind" --out "$out/train_xla_${tag}.json" ;;
    xla1024) run "${T_XLA:-150}" $py experiments/benchmark_train.py ${BENCH_ARGS:-} --batch_sizes 1024 \
             --dtypes bfloat16 --xla_variants "${STEP1024_VARIANTS:-$step1024_variants}" \
             --device_kind "$kind" --out "$out/train_xla1024_${tag}.json" ;;
    loopS) run "${T_LOOP:-100}" $py experiments/benchmark_loop.py ${BENCH_ARGS:-} ${LOOP_ARGS:-} \
             --sample_every "${SAMPLE_EVERY:-1000}" --loop_only \
             --device_kind "$kind" --out "$out/loop_samples_${tag}.json" ;;
    loopN) run "${T_LOOP:-100}" $py experiments/benchmark_loop.py ${BENCH_ARGS:-} ${LOOP_ARGS:-} \
             --steps_per_dispatch 100 --device_kind "$kind" --out "$out/loop_fused_${tag}.json" ;;
    profloop) run "${T_PROFLOOP:-150}" bash -c '
             set -e
             "$1" -c "import numpy as np; np.save(\"/tmp/loop64.npy\", np.random.default_rng(0).integers(0, 256, ($2, 64, 64, 3), dtype=np.uint8))"
             rm -rf /tmp/profloop
             "$1" -m dcgan_jax.main --config=configs/celeba.py --workdir=/tmp/profloop \
               --config.dataset=array --config.dataset_path=/tmp/loop64.npy --config.num_train_steps=400 \
               --config.log_every_steps=100 --config.sample_every_steps=0 --config.eval_every_steps=0 \
               --config.profile_skip_steps=300 --config.profile_steps=50 $4
             "$1" -m dcgan_jax.profiling --workdir=/tmp/profloop --json_out="$3"
             mkdir -p /tmp/profile && cp -r /tmp/profloop/profile /tmp/profile/loop' \
             _ "$py" "${LOOP_IMAGES:-20000}" "$out/profile_loop_${tag}.json" "${PROFLOOP_ARGS:-}" ;;
    ckpt) run "${T_CKPT:-60}" $py experiments/benchmark_checkpoint.py --device_kind "$kind" \
             --out "$out/checkpoint_${tag}.json" ;;
    baseline) if [ -d .baseline/dcgan_jax ]; then
               PYTHONPATH="$PWD/.baseline:$site" run "${T_BASE:-70}" $py experiments/benchmark_train.py \
                 ${BENCH_ARGS:-} ${TRAIN_ARGS:-} --no_torch --device_kind "$kind" \
                 --out "$out/train_baseline_${tag}.json"
             fi ;;
    *) echo "unknown part $part (train, profile, fid, profinc, loop, loopS, loopN, profloop, xla, xla1024, profpad, fidx, ckpt, baseline)" ;;
  esac
done
tar czf "$out/profile.tgz" -C /tmp profile 2>/dev/null
ls -la "$out"
