#!/usr/bin/env bash
# One-shot GPU check of tinytok: CuPy tests, NumPy-vs-CuPy parity, and both benchmarks.
#
#   tests/gpu/run.sh OUTDIR
#
# For a machine with an NVIDIA GPU whose image already has CuPy (and NumPy, SciPy, Pillow,
# pytest) and no network: nothing is downloaded. Runs from the repository root and writes
# into OUTDIR:
#
#   run.log                 everything below, as it happened
#   env.txt                 nvidia-smi, Python, NumPy, CuPy, the device
#   install.log             pip install --no-deps --no-build-isolation -e . (or the fallback)
#   parity.log/.xml         tests/test_backend_parity.py: NumPy vs CuPy, ops/models/training
#   cupy_tests.log/.xml     the suite's CuPy variants (xp fixture param "cupy", -k cupy)
#   lessons.log/.xml        the lessons' "# lesson: gpu" blocks (01 and 17), really on the GPU
#   nccl.json/.log          two GPUs, one model: NCCL's all-reduce (tinytok.distributed) and a
#                           tokenizer trained on both against one GPU (SKIP with fewer GPUs)
#   bench_cupy.json/.log    tinytok bench --backend cupy --json
#   bench_numpy.json/.log   tinytok bench --json (the CPU, same machine: the speed-up baseline)
#   summary.json            step exit codes, test counts, failing tests, speed-ups
#
# Test selection: the conftest `xp` fixture is parametrized over ("numpy", "cupy") and skips
# "cupy" where CuPy cannot run; `-k cupy` keeps the CuPy variants (and tests named for CuPy).
# The whole run stays under a deadline (default 420 s, TINYTOK_GPU_DEADLINE to change): each
# step gets at most what is left, and a step that no longer fits is skipped and reported.
# Extra bench flags (both backends) can be given in TINYTOK_BENCH_ARGS.
#
# Rehearsal on a CPU (for whoever edits this script): TINYTOK_GPU_SKIP_INSTALL=1 keeps the
# installed package, TINYTOK_GPU_FAKE=1 runs the pytest steps with tests/fake_cupy.py
# standing in for CuPy, TINYTOK_BENCH_ARGS=--quick shrinks the benchmarks.
set -u -o pipefail

OUT=${1:?usage: tests/gpu/run.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
PY=${PYTHON:-python}
DEADLINE=$((SECONDS + ${TINYTOK_GPU_DEADLINE:-420}))
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-/tmp/tinytok-cupy-kernel-cache}
export PYTHONUNBUFFERED=1
STEPS="$OUT/steps.tsv"
: > "$STEPS"
: > "$OUT/run.log"

log() { echo "[$(date +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$OUT/run.log"; }

# step NAME MAX_SECONDS COMMAND...: run COMMAND with a timeout, its output teed to
# OUT/NAME.log and run.log; records "NAME rc seconds" in steps.tsv. rc 124: timed out,
# rc "skipped": not enough time left.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - SECONDS - 15))
    if [ "$left" -lt 20 ]; then
        log "SKIP $name: only ${left}s left before the deadline"
        printf '%s\tskipped\t0\n' "$name" >> "$STEPS"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    log "START $name (limit ${limit}s): $*"
    local t0=$SECONDS rc=0
    # pipefail: rc is the command's (or timeout's 124), not tee's
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log" >> "$OUT/run.log" || rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$STEPS"
    log "END $name: exit $rc after $((SECONDS - t0))s"
    tail -n 3 "$OUT/$name.log" | sed 's/^/    /' | tee -a "$OUT/run.log"
    return 0
}

# --- what machine is this
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)" \
         "$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo '(with local changes)')"
    echo "cpus: $(nproc)"
    timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
        2>&1 || echo "nvidia-smi: not available"
    timeout 60 "$PY" - <<'EOF' 2>&1
import platform, numpy
print("python", platform.python_version(), "| numpy", numpy.__version__)
try:
    import cupy
    print("cupy", cupy.__version__, "| available:", cupy.is_available())
    n = cupy.cuda.runtime.getDeviceCount()
    props = cupy.cuda.runtime.getDeviceProperties(0)
    print("devices:", n, "| device 0:", props["name"].decode(), "| cuda runtime",
          cupy.cuda.runtime.runtimeGetVersion(), "| driver", cupy.cuda.runtime.driverGetVersion())
except Exception as e:
    print("cupy problem:", type(e).__name__, e)
for mod in ("scipy", "PIL", "pytest", "hypothesis", "torch"):
    try:
        m = __import__(mod)
        print(mod, getattr(m, "__version__", "?"))
    except Exception as e:
        print(mod, "missing:", e)
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" | tee -a "$OUT/run.log"

# --- install without downloads; fall back to the source tree on the path
if [ "${TINYTOK_GPU_SKIP_INSTALL:-0}" = 1 ]; then
    log "SKIP install (TINYTOK_GPU_SKIP_INSTALL=1)"
else
    step install 120 "$PY" -m pip install --no-deps --no-build-isolation --no-index -e "$ROOT"
fi
if ! (cd /tmp && "$PY" -c "import tinytok") 2>/dev/null ||
   [ "$(awk -F'\t' '$1=="install"{print $2}' "$STEPS")" = 1 ]; then
    log "pip install did not work; using PYTHONPATH=$ROOT instead"
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
TINYTOK=("$PY" -m tinytok.cli)

step backend 60 "$PY" -c "
from tinytok import backend
xp = backend.use('cupy')
x = xp.arange(10, dtype=xp.float32)
print('tinytok.backend.use(\"cupy\") works:', float((x * x).sum()), xp.cuda.runtime.getDeviceCount(), 'device(s)')"

PYTEST=("$PY" -m pytest -p no:cacheprovider -q -rfEs --tb=short)
if [ "${TINYTOK_GPU_FAKE:-0}" = 1 ]; then
    log "REHEARSAL: pytest steps use tests/fake_cupy.py instead of a GPU"
    PYTEST+=(-p fake_cupy)
    export PYTHONPATH="$ROOT/tests${PYTHONPATH:+:$PYTHONPATH}"
fi

# --- NumPy vs CuPy: outputs and gradients of every op pair, models, loss curves, checkpoints
step parity 150 "${PYTEST[@]}" tests/test_backend_parity.py tests/test_cupy_namespace.py \
    --junitxml="$OUT/parity.xml"

# --- the suite's CuPy variants: op, gradient-check, model, sampling, training tests
step cupy_tests 210 "${PYTEST[@]}" tests -k cupy \
    --ignore=tests/test_fake_cupy.py --ignore=tests/test_backend_parity.py \
    --ignore=tests/test_cupy_namespace.py --ignore=tests/peers \
    --junitxml="$OUT/cupy_tests.xml"

# --- the benchmark on the GPU, then the same on the CPU for the speed-up
# batch 256 on both: the issue's 10x comparison of training-step throughput
read -r -a BENCH_ARGS <<< "${TINYTOK_BENCH_ARGS:---batch 256 --repeats 5}"
# stdout (the JSON) to the .json file; stderr to the step's log
step bench_cupy 120 bash -c '"$@" > "$0"' "$OUT/bench_cupy.json" \
    "${TINYTOK[@]}" bench --backend cupy --json ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"}
step bench_numpy 120 bash -c '"$@" > "$0"' "$OUT/bench_numpy.json" \
    "${TINYTOK[@]}" bench --backend numpy --json ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"}

# --- the lessons' GPU blocks (skipped on machines without a GPU, so run them here)
step lessons 60 "${PYTEST[@]}" tests/test_lessons.py -k "01_ or 17_" -s \
    --junitxml="$OUT/lessons.xml"

# --- two GPUs: gradients added by NCCL, ranks as threads (no MPI needed); with fewer
# than two GPUs the check prints SKIP and passes (there is nothing to add across)
NCCL_ARGS=()
[ "${TINYTOK_GPU_FAKE:-0}" = 1 ] && NCCL_ARGS=(--fake)
step nccl 120 "$PY" tests/gpu/nccl_check.py ${NCCL_ARGS[@]+"${NCCL_ARGS[@]}"} "$OUT/nccl.json"

step summary 30 "$PY" tests/gpu/summarize.py "$OUT"
log "done in ${SECONDS}s; results in $OUT (summary.json)"
# exit non-zero if any step failed, timed out or was skipped
! awk -F'\t' '$2 != "0" {bad=1} END {exit !bad}' "$STEPS"
