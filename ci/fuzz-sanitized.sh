#!/usr/bin/env bash
# Fuzz the fast path under AddressSanitizer and UndefinedBehaviorSanitizer (SECURITY.md).
#
# Builds natt._fastpath with NATT_SANITIZE=1 (-fsanitize=address,undefined, see setup.py) in a
# temporary copy of the tree, then runs fuzz/run_fuzz.py against it for a bounded time (half
# with threads=None, half with threads=2) and the data-path tests of tests/test_batch.py,
# tests/test_fuzz.py and tests/test_hygiene.py (which also exercise encap), plus the AES-NI CBC
# lanes' test of tests/test_fastpath.py (mixed lengths, every key size) and the SA arena's
# (natt_arena.h poisons freed SA slots, so a use after free still reports). Fails on any
# sanitizer report, crash, fuzzer finding or test failure.
#
# Environment:
#   NATT_FUZZ_SECONDS  total fuzzing time (default 120)
#   NATT_FUZZ_SEED     fuzzer seed (default: derived from the date, printed)
#   NATT_FUZZ_SRC      source tree to build (default: this checkout)
#   NATT_FUZZ_KEEP=1   keep the temporary directory (build log, fuzz log, findings)
#   PYTHON             interpreter (default python3; needs numpy and cryptography)
set -euo pipefail

src="${NATT_FUZZ_SRC:-$(cd "$(dirname "$0")/.." && pwd)}"
seconds="${NATT_FUZZ_SECONDS:-120}"
seed="${NATT_FUZZ_SEED:-$(date +%Y%m%d)}"
python="${PYTHON:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/natt-asan.XXXXXX")"
if [ -z "${NATT_FUZZ_KEEP:-}" ]; then
    trap 'rm -rf "$work"' EXIT
fi
echo "fuzz-sanitized: source $src, work dir $work, seed $seed, ${seconds}s"

# Build dependencies (a CI venv built with `pip install .` may lack Cython).
"$python" -c "import Cython, numpy, setuptools" 2>/dev/null \
    || "$python" -m pip install -q "cython>=3" numpy setuptools

# The copy has no pyproject.toml: only the extension is built here, from setup.py, with the
# same flags as a release build plus the sanitizers; package metadata plays no part.
mkdir -p "$work/tree"
cp -r "$src/natt" "$src/setup.py" "$src/fuzz" "$src/tests" "$work/tree/"
rm -f "$work"/tree/natt/*.so "$work"/tree/natt/_fastpath.c
if ! (cd "$work/tree" && NATT_SANITIZE=1 "$python" setup.py -q build_ext --inplace) >"$work/build.log" 2>&1; then
    tail -40 "$work/build.log"
    echo "fuzz-sanitized: FAILED to build the sanitized extension"
    exit 1
fi
so="$(ls "$work"/tree/natt/_fastpath*.so)"
# Not "ldd | grep -q" under pipefail: grep -q exits at the first match and ldd, still writing,
# dies of SIGPIPE, which failed a CI run on a correctly sanitized build.
libs="$(ldd "$so")"
if [[ "$libs" != *libasan* ]]; then
    printf '%s\n' "$libs"
    echo "fuzz-sanitized: $so is not linked against libasan (NATT_SANITIZE ignored?)"
    exit 1
fi

# CPython is not built with ASan, so the runtime must come first (LD_PRELOAD); CPython's
# interned objects live until exit, hence detect_leaks=0. Any report aborts the process.
export LD_PRELOAD
LD_PRELOAD="$(gcc -print-file-name=libasan.so)"
# Reports go to files ($work/san.<pid>): pytest's output capture would swallow them on stderr.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:log_path=$work/san"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1:log_path=$work/san"
export PYTHONPATH="$work/tree"
export NATT_FUZZ_FINDINGS="$work/findings"
cd "$work"      # not the checkout: "python -" puts the current directory first on sys.path

"$python" - "$work" <<'EOF'
import sys
import natt, natt._fastpath as f
assert f.__file__.startswith(sys.argv[1]), f"imported {f.__file__}, not the sanitized build"
assert "fast" in natt.backends(), natt.backends()
print(f"fuzz-sanitized: using {f.__file__}")
EOF

status=0
# Prints and clears any sanitizer report files; returns 1 if there were any.
reports() {
    local found=0 f
    for f in "$work"/san.*; do
        [ -e "$f" ] || continue
        cat "$f"
        rm -f "$f"
        found=1
    done
    return "$found"
}

half=$(( seconds / 2 > 0 ? seconds / 2 : 1 ))
for threads in "" 2; do
    args=(--seconds "$half" --seed "$seed" --batch 2048 --isolate 64 --save-last --report 20)
    [ -n "$threads" ] && args+=(--threads "$threads")
    set +e
    "$python" "$work/tree/fuzz/run_fuzz.py" "${args[@]}" >"$work/fuzz${threads}.log" 2>&1
    rc=$?
    set -e
    cat "$work/fuzz${threads}.log"
    if ! reports; then
        echo "fuzz-sanitized: SANITIZER REPORT (threads=${threads:-None}); the batch is in $work/findings/last-batch.npz"
        status=1
    elif [ "$rc" -ne 0 ]; then
        echo "fuzz-sanitized: fuzzer exited with status $rc (threads=${threads:-None}): crash or findings"
        status=1
    fi
    seed=$(( seed + 1 ))
done

# The data-path tests under the sanitizers (memory-use measurements mean nothing under ASan,
# nor does a scan of the process's memory for copies of a key: ASan's shadow is terabytes of
# reservation, and its quarantine keeps freed blocks as they were; the type check reads no
# compiled code and needs pyproject.toml, which the copy leaves out).
set +e
(cd "$work/tree" && "$python" -m pytest -q -p no:cacheprovider -o addopts="" \
    tests/test_batch.py tests/test_fuzz.py tests/test_hygiene.py \
    tests/test_fastpath.py::test_encap_of_mixed_lengths_opens_with_cryptography \
    tests/test_arena.py::test_deleted_sas_give_their_slabs_back \
    -k "not many_sas and not python_objects and not mypy and not left_in_memory")
rc=$?
set -e
if ! reports; then
    echo "fuzz-sanitized: SANITIZER REPORT in the tests"
    status=1
elif [ "$rc" -ne 0 ]; then
    echo "fuzz-sanitized: tests failed under the sanitizers (status $rc)"
    status=1
fi

if [ "$status" -ne 0 ]; then
    [ -n "${NATT_FUZZ_KEEP:-}" ] || echo "fuzz-sanitized: rerun with NATT_FUZZ_KEEP=1 to keep $work"
    exit 1
fi
echo "fuzz-sanitized: OK, no sanitizer report and no finding"
