#!/usr/bin/env bash
# One GPU session, at most 7 min 40 s (the limits below add up to 460 s): the CUDA tests
# of the ops, then every GPU benchmark, each step under its own time limit so that one
# slow step cannot eat the others' time. A benchmark stopped at its limit (SIGINT) still
# prints and saves the groups it finished and the rounds of the group it was in that
# every provider finished, its JSON marked "interrupted": true (bench/common.py:
# run_cases, time_interleaved; fista, sparse_decode, dnn_step and linear_step likewise).
#
#   bash bench/gpu_check.sh [OUT]      # OUT: where the JSON and logs go (default bench/results)
#
# On the device machine of the `run` tool, pass its $OUT so that the files come back:
#   run: bash bench/gpu_check.sh "$OUT"          (timeout_s 600)
# then copy them into bench/results/ here. Writes:
#   gpu_tests.log                    the pytest output (CUDA tensors: Triton backend)
#   overhead_cuda.json               per-call overhead vs eager (tiny inputs)
#   threshold_sample_quick_cuda.json, elbo_select_quick_cuda.json,
#   linear_elbo_quick_cuda.json, fista_quick_cuda.json, sparse_decode_quick_cuda.json,
#   dnn_step_cuda.json, linear_step_cuda.json
#   gpu_check.log                    this script's own log (step times, exit codes)
set -u
cd "$(dirname "$0")/.."
OUT="${1:-bench/results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
LOG="$OUT/gpu_check.log"
: > "$LOG"

step() {  # step NAME SECONDS COMMAND...
    local name="$1" limit="$2"; shift 2
    local start=$SECONDS
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tail -n 60 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: rc=$rc in $((SECONDS - start)) s" | tee -a "$LOG"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee -a "$LOG"

# 1. The ops' tests on CUDA tensors (the Triton kernels compiled for the GPU); pytest
#    stopped at its limit still reports (and writes the junit XML of) what it ran.
#    Not the vsc end-to-end training tests (CPU) nor the statistical slow tests.
step tests 140 "$PY" -m pytest -q --maxfail=5 -p no:cacheprovider -m "not slow" \
    tests/test_philox.py tests/test_threshold_sample_backends.py \
    tests/test_threshold_sample_compile.py tests/test_nonfinite.py tests/test_elbo_select.py \
    tests/test_linear_elbo.py tests/test_fista.py tests/test_sparse_decode.py \
    tests/test_graphed_step.py::test_a_cuda_graph_step_trains_as_the_eager_step_on_the_gpu \
    --junitxml="$OUT/gpu_tests.xml" -o junit_family=xunit2

# 2. Benchmarks (--quick shapes; each writes <op>[_quick]_cuda.json into $OUT), 240 s.
step overhead 30 "$PY" bench/overhead.py --device cuda --out "$OUT"
step threshold_sample 60 "$PY" bench/threshold_sample.py --quick --device cuda --out "$OUT"
step elbo_select 40 "$PY" bench/elbo_select.py --quick --device cuda --out "$OUT"
step linear_elbo 50 "$PY" bench/linear_elbo.py --quick --device cuda --out "$OUT"
step fista 35 "$PY" bench/fista.py --quick --device cuda --max-iter 200 --sklearn-rows 0 \
    --out "$OUT"
step sparse_decode 25 "$PY" bench/sparse_decode.py --quick --device cuda --out "$OUT"
# 3. The DNN training step (issue 12): B=512, bf16, against the public code's pattern.
step dnn_step 50 "$PY" bench/dnn_step.py --device cuda --repeats 5 --out "$OUT"
# 4. The linear training step at B=100: eager vs replayed from a CUDA graph (issue 11).
step linear_step 30 "$PY" bench/linear_step.py --device cuda --rounds 10 --out "$OUT"
echo "done in $SECONDS s; results in $OUT" | tee -a "$LOG"
