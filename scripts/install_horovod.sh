#!/usr/bin/env bash
# Build and install Horovod 0.28.1 (PyTorch + Gloo) from source into a venv.
#
# Usage: scripts/install_horovod.sh [PATH/TO/VENV]     (default: .venv)
#
# The venv must already contain torch (the project pins 2.13.0). Re-running
# is cheap: if a working Horovod 0.28.1 is already importable we exit at
# once, and otherwise pip's wheel cache turns a rebuild into a reinstall.
#
# Why this script exists: Horovod 0.28.1's CMake pins the PyTorch extension
# to C++14, but torch >= 2.1 headers need C++17 (std::is_same_v & co.), so a
# plain `pip install horovod` fails. We put a thin C++ compiler wrapper first
# on PATH that upgrades any -std=c++11/14 request to C++17 and otherwise
# passes everything through untouched.
#
# --- Cluster builds (GPU / MPI) --------------------------------------------
# The script only fills in CPU-friendly defaults for HOROVOD_* variables that
# are unset, so a cluster build is configured by exporting them beforehand:
#
#   HOROVOD_GPU_OPERATIONS=NCCL   run allreduce/allgather/broadcast on GPUs
#                                 through NCCL (needs a CUDA build of torch)
#   HOROVOD_NCCL_HOME=/path/nccl  where NCCL lives if not in a system path
#                                 (HOROVOD_NCCL_INCLUDE / _LIB for split
#                                 layouts, HOROVOD_CUDA_HOME for the toolkit)
#   HOROVOD_WITH_MPI=1            fail the build unless MPI support is built
#                                 (mpicc must be on PATH)
#
# e.g.  HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_WITH_MPI=1 \
#       HOROVOD_FORCE_REBUILD=1 scripts/install_horovod.sh .venv
#
# HOROVOD_FORCE_REBUILD=1 bypasses pip's wheel cache. Use it whenever the
# build configuration or the torch version changed: pip keys its cached wheel
# only on the sdist, so it would otherwise happily reinstall a wheel compiled
# for a different torch ABI or without GPU support.
# ---------------------------------------------------------------------------
set -euo pipefail

HVD_VERSION=0.28.1
VENV=${1:-.venv}

die() { echo "install_horovod: ERROR: $*" >&2; exit 1; }
say() { echo "install_horovod: $*"; }

[[ -x "$VENV/bin/python" ]] || die "no python at $VENV/bin/python (create the venv and install torch first)"
VENV=$(cd "$VENV" && pwd)
PY="$VENV/bin/python"
LOG="$VENV/horovod-build.log"

# Importing horovod.torch loads the compiled extension, so this also catches
# a Horovod that is installed but was built against another torch.
horovod_ok() {
    "$PY" - "$HVD_VERSION" >/dev/null 2>&1 <<'EOF'
import sys
import horovod, horovod.torch
assert horovod.__version__ == sys.argv[1], horovod.__version__
EOF
}

if [[ "${HOROVOD_FORCE_REBUILD:-0}" != 1 ]] && horovod_ok; then
    say "horovod $HVD_VERSION with PyTorch support is already installed in $VENV; nothing to do."
    exit 0
fi

# The verification at the end insists on PyTorch + Gloo; refuse early
# rather than after a long build.
[[ -n "${HOROVOD_WITHOUT_PYTORCH:-}" ]] && die "HOROVOD_WITHOUT_PYTORCH is set, but this project needs horovod.torch"
[[ -n "${HOROVOD_WITHOUT_GLOO:-}" ]] && die "HOROVOD_WITHOUT_GLOO is set, but horovodrun --gloo needs Gloo"

TORCH_VERSION=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null) \
    || die "torch is not importable from $PY; install torch into the venv first"
say "building horovod $HVD_VERSION for torch $TORCH_VERSION in $VENV"

# --no-build-isolation (needed so the build sees the venv's torch) means pip
# will not fetch build requirements for us, and Horovod's setup.py also lists
# its runtime deps as setup_requires; install both sets up front.
"$PY" -m pip install -q setuptools wheel packaging cffi cloudpickle psutil pyyaml \
    || die "could not install Horovod's build prerequisites into $VENV"

# Horovod needs CMake >= 3.13. Its bundled gloo/flatbuffers still declare
# cmake_minimum_required(2.8), which CMake 4 rejects unless told to assume a
# newer policy baseline; the variable is ignored by CMake 3.
export CMAKE_POLICY_VERSION_MINIMUM=${CMAKE_POLICY_VERSION_MINIMUM:-3.5}
cmake_recent_enough() {
    local v
    v=$("$1" --version 2>/dev/null | sed -n 's/^cmake version \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
    [[ -n "$v" ]] && printf '3.13\n%s\n' "$v" | sort -V -C
}
if [[ -z "${HOROVOD_CMAKE:-}" ]]; then
    if command -v cmake >/dev/null && cmake_recent_enough "$(command -v cmake)"; then
        HOROVOD_CMAKE=$(command -v cmake)
    else
        # setup.py's own fallback pins an ancient CMake; prefer a current one.
        "$PY" -m pip install -q 'cmake>=3.13' || die "no CMake >= 3.13 available"
        HOROVOD_CMAKE="$VENV/bin/cmake"
    fi
fi
export HOROVOD_CMAKE
say "using $("$HOROVOD_CMAKE" --version | head -n1) ($HOROVOD_CMAKE)"

# --- compiler shim ---------------------------------------------------------
REAL_CXX=$(command -v "${CXX:-g++}") || die "no C++ compiler found (${CXX:-g++})"
SHIM_DIR=$(mktemp -d "${TMPDIR:-/tmp}/horovod-cxx-shim.XXXXXX")
trap 'rm -rf "$SHIM_DIR"' EXIT

cat >"$SHIM_DIR/g++" <<EOF
#!/usr/bin/env bash
# Temporary wrapper from install_horovod.sh: torch headers need C++17, but
# Horovod's CMake asks for older standards. Upgrade those, keep all else.
args=()
for a in "\$@"; do
    case "\$a" in
        -std=c++11|-std=c++14|-std=c++0x|-std=c++1y)         args+=(-std=c++17) ;;
        -std=gnu++11|-std=gnu++14|-std=gnu++0x|-std=gnu++1y) args+=(-std=gnu++17) ;;
        *) args+=("\$a") ;;
    esac
done
exec "$REAL_CXX" "\${args[@]}"
EOF
chmod +x "$SHIM_DIR/g++"
ln -s g++ "$SHIM_DIR/c++"
# The shim is named g++ on purpose: nvcc (GPU builds use it as host compiler)
# decides how to talk to the host compiler from its file name.
export PATH="$SHIM_DIR:$PATH"
export CXX="$SHIM_DIR/g++"
# C sources never get a -std=c++ flag, and compiling them as C++ would break
# them, so CC stays a real C compiler.
export CC=${CC:-$(command -v gcc || command -v cc || echo cc)}

# --- Horovod feature selection ---------------------------------------------
# Only fill in what the caller left unset; never forbid MPI or GPU support
# that the machine can provide.
export HOROVOD_WITH_PYTORCH=${HOROVOD_WITH_PYTORCH:-1}
export HOROVOD_WITH_GLOO=${HOROVOD_WITH_GLOO:-1}
[[ -z "${HOROVOD_WITH_TENSORFLOW:-}" ]] && export HOROVOD_WITHOUT_TENSORFLOW=${HOROVOD_WITHOUT_TENSORFLOW:-1}
[[ -z "${HOROVOD_WITH_MXNET:-}" ]] && export HOROVOD_WITHOUT_MXNET=${HOROVOD_WITHOUT_MXNET:-1}

if [[ -n "${HOROVOD_WITH_MPI:-}" ]] || command -v mpicc >/dev/null; then
    # MPI will be built (CMake finds it on its own); let Horovod use it for
    # CPU collectives unless the caller chose otherwise.
    say "MPI: enabled${HOROVOD_WITH_MPI:+ (HOROVOD_WITH_MPI=$HOROVOD_WITH_MPI)}"
else
    # Nothing to find, so say so explicitly rather than have CMake half-find
    # some stray MPI headers; Gloo then does the CPU collectives.
    [[ -z "${HOROVOD_WITHOUT_MPI:-}" ]] && export HOROVOD_WITHOUT_MPI=1
    export HOROVOD_CPU_OPERATIONS=${HOROVOD_CPU_OPERATIONS:-gloo}
fi

# setup.py runs `make -j8` unless MAKEFLAGS is set; on small machines that
# only oversubscribes CPU and memory.
export MAKEFLAGS=${MAKEFLAGS:--j$(nproc 2>/dev/null || echo 2)}

PIP_ARGS=(install --no-build-isolation -v "horovod==$HVD_VERSION")
if [[ "${HOROVOD_FORCE_REBUILD:-0}" == 1 ]]; then
    PIP_ARGS+=(--no-cache-dir --force-reinstall --no-deps)
elif "$PY" -m pip show -q horovod >/dev/null 2>&1; then
    # Installed but failing the check above (broken or other version):
    # pip would otherwise report "already satisfied" and do nothing.
    "$PY" -m pip uninstall -q -y horovod
fi

{
    echo "# install_horovod.sh  $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
    echo "# venv=$VENV torch=$TORCH_VERSION CXX=$CXX -> $REAL_CXX CC=$CC"
    env | grep -E '^(HOROVOD_|CMAKE_POLICY|MAKEFLAGS)' | sort | sed 's/^/# /'
    echo "# pip ${PIP_ARGS[*]}"
} >"$LOG"

say "compiling (several minutes on a small machine; log: $LOG)"
start=$SECONDS
if ! "$PY" -m pip "${PIP_ARGS[@]}" >>"$LOG" 2>&1; then
    # The root cause (CMake or compiler error) is usually far above pip's
    # closing traceback, so surface the first few error lines too.
    echo "----- first error lines in $LOG -----" >&2
    grep -m 8 -A 1 -E 'CMake Error|error:|Error [0-9]+|FATAL' "$LOG" | cut -c1-400 >&2 || true
    echo "----- last 40 lines of $LOG -----" >&2
    tail -n 40 "$LOG" >&2
    echo "---------------------------------" >&2
    die "building horovod $HVD_VERSION failed; full log in $LOG"
fi
say "pip finished in $((SECONDS - start))s"

# --- verification ------------------------------------------------------------
if ! horovod_ok; then
    "$PY" -c 'import horovod.torch' 2>&1 | tail -n 5 >&2 || true
    die "horovod installed but horovod.torch does not import; if the wheel came from pip's cache, rerun with HOROVOD_FORCE_REBUILD=1"
fi

CHECK=$("$VENV/bin/horovodrun" --check-build 2>&1) || { echo "$CHECK" >&2; die "horovodrun --check-build failed"; }
echo "$CHECK"
missing=()
grep -Eq '^[[:space:]]*\[X\][[:space:]]+PyTorch[[:space:]]*$' <<<"$CHECK" || missing+=(PyTorch)
grep -Eq '^[[:space:]]*\[X\][[:space:]]+Gloo[[:space:]]*$' <<<"$CHECK" || missing+=(Gloo)
if ((${#missing[@]})); then
    die "horovod built without: ${missing[*]} (see $LOG; rerun with HOROVOD_FORCE_REBUILD=1 after fixing)"
fi
say "horovod $HVD_VERSION installed in $VENV with PyTorch + Gloo"
