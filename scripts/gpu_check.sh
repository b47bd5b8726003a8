#!/usr/bin/env bash
# One-shot GPU check of the DisentangledAttention CUDA kernel, for an H100/H200 with CUDA 13
# (nvcc, compute-sanitizer), cmake, python3 + torch + numpy + transformers; no TensorRT, no
# network, no installed debertrt package needed.
#
#   1. build plugins/ with CMake (nvcc, sm_80/86/89/90 + PTX)
#   2. the C++ kernel self-test (bit-exact vs a CPU reference, odd shapes, >65535 rows)
#   3. correctness matrix vs the float64 torch / NumPy reference, then timings vs eager
#      torch gathers, torch.compile and the byte floor            (scripts/bench_kernel.py)
#   4. compute-sanitizer memcheck, racecheck, synccheck, initcheck on the self-test (--quick)
#   5. compute-sanitizer memcheck of python + torch calling the kernel (3 tiny cases; optional,
#      time-limited: a timeout is reported, not counted as a failure)
#   F1. DisentangledFlashAttention Triton kernel: correctness matrix vs the float32 torch reference
#      (fp16/bf16, S in {1, 63, 64, 65, 500, 512, 2048}, padding kinds)      (scripts/flash_check.py gpu)
#   F2. attention benchmark, all peers side by side (ms, TFLOP/s; optional)  (scripts/bench_attention.py)
#   F3. the same kernel's ahead-of-time cubins (compiled by Triton during the build, embedded in
#      libdebertrt_flash.so) through the C++ launcher the TensorRT plugin links, vs the same reference
#      (fp16/bf16, S in {1, 64, 65, 512}, every presence, padding, head dims 32/48/64/128)
#                                                                  (scripts/flash_check.py launcher)
#   F1-F3 run right after the build (F2's gather-plugin peer uses the library it made).
#
# Peers that PyPI has and this machine lacks travel as wheels: put them in $REPO/.whl/ (ignored
# by git) on a machine with pip, e.g.
#   python3 -m pip download --no-deps -d .whl flashdeberta==0.0.8 disentangled-flash==1.1.1
# (both are py3-none-any; their other needs, torch/triton/einops/transformers, are on the GPU
# image). This script installs whatever .whl/ holds into a temporary --target and puts it on
# PYTHONPATH; nothing is fetched.
#
# Usage: scripts/gpu_check.sh [OUT_DIR]
#   results go to $OUT if set, else OUT_DIR, else ./debertrt-out/gpu_check:
#   summary.txt, summary.json, kernel_check.json, one <step>.log per step.
# Env: DEBERTRT_BUILD_DIR (default: a new temp dir), DEBERTRT_CUDA_ARCHITECTURES (CMake syntax),
#      DEBERTRT_GPU_CHECK_QUICK=1 (smaller matrix), DEBERTRT_GPU_CHECK_NO_COMPILE=1 (skip torch.compile),
#      DEBERTRT_GPU_CHECK_ONLY=flash (only F1-F3: the CMake build of libdebertrt_flash.so alone, no
#      gather-kernel checks).
# The build compiles the fused kernel with python3's triton (CMake option Python3_EXECUTABLE).
# Time: each step has a limit (run_step's third argument); F1 240 s, F2 300 s, F3 120 s.
# Exit: 0 every required step passed, 1 a required step failed, 2 the build could not run.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${OUT:-${1:-$REPO/debertrt-out/gpu_check}}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
BUILD_DIR=${DEBERTRT_BUILD_DIR:-$(mktemp -d /tmp/debertrt-gpu-check.XXXXXX)/build}
ARCHS=${DEBERTRT_CUDA_ARCHITECTURES:-80-real;86-real;89-real;90-real;90-virtual}
SUMMARY_TXT=$OUT_DIR/summary.txt
SUMMARY_TSV=$OUT_DIR/.steps.tsv
: > "$SUMMARY_TXT"
: > "$SUMMARY_TSV"
failed=0

note() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$SUMMARY_TXT"; }

# run_step NAME REQUIRED(1|0) TIMEOUT_S command... ; output in $OUT_DIR/NAME.log, tail shown
run_step() {
  local name=$1 required=$2 limit=$3
  shift 3
  note "== $name: $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  local secs=$((SECONDS - t0))
  tail -n 30 "$OUT_DIR/$name.log"
  local status=pass
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    status=timeout
  elif [[ $rc -ne 0 ]]; then
    status=fail
  fi
  if [[ $status != pass && $required == 1 ]]; then
    failed=1
  fi
  note "   $name: $status (rc=$rc, ${secs}s, required=$required)"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$secs" "$required" >> "$SUMMARY_TSV"
  return $rc
}

skip_step() {
  note "== $1: skipped ($2)"
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "skipped: $2" "-" "0" "0" >> "$SUMMARY_TSV"
}

write_summary_json() {
  python3 - "$SUMMARY_TSV" "$OUT_DIR/summary.json" "$failed" "$BUILD_DIR" <<'PY'
import json, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
steps = [{"step": r[0], "status": r[1], "rc": r[2], "seconds": int(r[3]), "required": r[4] == "1"} for r in rows]
json.dump({"status": "fail" if sys.argv[3] == "1" else "pass", "build_dir": sys.argv[4], "steps": steps},
          open(sys.argv[2], "w"), indent=2)
PY
}

# ---- 0. environment -------------------------------------------------------------------------
if ! command -v nvcc > /dev/null 2>&1; then
  for dir in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
    if [[ -n $dir && -x $dir/bin/nvcc ]]; then
      export PATH="$dir/bin:$PATH"
      break
    fi
  done
fi
SANITIZER=$(command -v compute-sanitizer 2> /dev/null || true)
if [[ -z $SANITIZER ]]; then
  for candidate in "$(dirname "$(command -v nvcc 2> /dev/null || echo /usr/local/cuda/bin/nvcc)")/compute-sanitizer" \
    /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    if [[ -x $candidate ]]; then
      SANITIZER=$candidate
      break
    fi
  done
fi
{
  echo "repo: $REPO"
  echo "out: $OUT_DIR"
  echo "build: $BUILD_DIR"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
  nvcc --version 2>&1 | tail -n 2 || true
  cmake --version 2>&1 | head -n 1 || true
  echo "compute-sanitizer: ${SANITIZER:-not found}"
  python3 -c 'import sys, torch, numpy; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "numpy", numpy.__version__)' 2>&1
  python3 -c 'import transformers; print("transformers", transformers.__version__)' 2>&1
} | tee "$OUT_DIR/environment.txt" | tee -a "$SUMMARY_TXT"

# ---- wheels carried for the benchmark's peers ---------------------------------------------------
if compgen -G "$REPO/.whl/*.whl" > /dev/null; then
  WHEEL_SITE=$(mktemp -d /tmp/debertrt-wheels.XXXXXX)
  if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WHEEL_SITE" \
    "$REPO"/.whl/*.whl 2>&1 | tee -a "$SUMMARY_TXT"; then
    export PYTHONPATH="$WHEEL_SITE${PYTHONPATH:+:$PYTHONPATH}"
    note "wheels from .whl/ installed into $WHEEL_SITE: $(cd "$REPO/.whl" && ls -- *.whl | tr '\n' ' ')"
  fi
fi

flash_steps() {  # F1, F3, F2 (the optional benchmark last); $1: the kernel library for the gather-plugin peer
  run_step flash_check 1 240 python3 "$REPO/scripts/flash_check.py" gpu --json "$OUT_DIR/flash_check.json"
  if [[ -f $BUILD_DIR/libdebertrt_flash.so ]]; then
    run_step flash_launcher 1 120 python3 "$REPO/scripts/flash_check.py" launcher \
      --library "$BUILD_DIR/libdebertrt_flash.so" --json "$OUT_DIR/flash_launcher.json"
  else
    skip_step flash_launcher "libdebertrt_flash.so was not built (python3 without triton? see configure.log)"
    failed=1
  fi
  local args=(--json "$OUT_DIR/bench_attention.json")
  [[ -n ${1:-} ]] && args+=(--kernel-library "$1")
  [[ ${DEBERTRT_GPU_CHECK_NO_COMPILE:-0} == 1 ]] && args+=(--no-compile)
  run_step bench_attention 0 300 python3 "$REPO/scripts/bench_attention.py" "${args[@]}"
}

if ! command -v nvcc > /dev/null 2>&1 || ! command -v cmake > /dev/null 2>&1; then
  note "nvcc or cmake not found: cannot build"
  skip_step build "nvcc or cmake missing"
  failed=1
  write_summary_json
  exit 2
fi

# ---- 1. build -------------------------------------------------------------------------------
BUILD_TARGETS=()
[[ ${DEBERTRT_GPU_CHECK_ONLY:-} == flash ]] && BUILD_TARGETS=(--target debertrt_flash)
if ! run_step configure 1 300 cmake -S "$REPO/plugins" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release \
  "-DDEBERTRT_CUDA_ARCHITECTURES=$ARCHS" "-DPython3_EXECUTABLE=$(command -v python3)"; then
  write_summary_json
  exit 2
fi
if ! run_step build 1 600 cmake --build "$BUILD_DIR" --parallel "$(nproc)" "${BUILD_TARGETS[@]}"; then
  write_summary_json
  exit 2
fi
if [[ ${DEBERTRT_GPU_CHECK_ONLY:-} == flash ]]; then
  flash_steps ""
  write_summary_json
  note "overall: $([[ $failed == 0 ]] && echo PASS || echo FAIL); results in $OUT_DIR"
  exit $failed
fi
KERNEL_LIB=$BUILD_DIR/libdebertrt_kernels.so
SELFTEST=$BUILD_DIR/debertrt_kernel_selftest
nm -D --defined-only "$KERNEL_LIB" 2>&1 | grep debertrt_ | tee -a "$SUMMARY_TXT"

# ---- F1-F3: the fused Triton kernel (before the long sanitizer runs) --------------------------
flash_steps "$KERNEL_LIB"

# ---- 2. C++ self-test -----------------------------------------------------------------------
run_step selftest 1 300 "$SELFTEST"

# ---- 3. correctness matrix + timing (python) ------------------------------------------------
PY_ARGS=(--kernel-library "$KERNEL_LIB" --json "$OUT_DIR/kernel_check.json")
[[ ${DEBERTRT_GPU_CHECK_QUICK:-0} == 1 ]] && PY_ARGS+=(--quick)
[[ ${DEBERTRT_GPU_CHECK_NO_COMPILE:-0} == 1 ]] && PY_ARGS+=(--no-compile)
run_step kernel_check 1 420 python3 "$REPO/scripts/bench_kernel.py" "${PY_ARGS[@]}"

# ---- 4. compute-sanitizer on the self-test --------------------------------------------------
if [[ -n $SANITIZER ]]; then
  run_step memcheck 1 300 "$SANITIZER" --tool memcheck --leak-check full --error-exitcode 99 "$SELFTEST" --quick
  run_step racecheck 1 300 "$SANITIZER" --tool racecheck --error-exitcode 99 "$SELFTEST" --quick
  run_step synccheck 1 300 "$SANITIZER" --tool synccheck --error-exitcode 99 "$SELFTEST" --quick
  run_step initcheck 1 300 "$SANITIZER" --tool initcheck --error-exitcode 99 "$SELFTEST" --quick
  # ---- 5. python + torch under memcheck (optional, time-limited) ----------------------------
  run_step python_memcheck 0 60 "$SANITIZER" --tool memcheck --error-exitcode 99 \
    python3 "$REPO/scripts/bench_kernel.py" --kernel-library "$KERNEL_LIB" --smoke --json "$OUT_DIR/smoke.json"
else
  skip_step sanitizers "compute-sanitizer not found"
fi

write_summary_json
note "steps:"
column -t -s $'\t' "$SUMMARY_TSV" | tee -a "$SUMMARY_TXT" || cat "$SUMMARY_TSV"
note "overall: $([[ $failed == 0 ]] && echo PASS || echo FAIL); results in $OUT_DIR"
exit $failed
