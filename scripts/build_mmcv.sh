#!/usr/bin/env bash
# Build mmcv 2.1.0 (with its compiled CPU ops) once, cache the wheel, and install the mmdet stack.
#
# Why: mmdet 3.3.0 needs the *full* mmcv (mmcv.ops: RoIAlign, NMS, ...). PyPI has no cp311 Linux
# wheel for it, so pip falls back to the sdist, whose setup.py (a) imports pkg_resources (gone in
# setuptools >= 81) and (b) hard-codes -std=c++14/17 while torch >= 2.10 headers require C++20.
# The recipe: download the sdist, patch the flag to -std=c++20, build without build isolation next
# to the installed torch with setuptools < 81. The compile took 15.5 minutes on 2 idle cores with
# Python's default -O2 -g and 7.3 minutes with -O0 -g0, so -O0 -g0 is the default here (MMCV_CFLAGS
# changes it): the compiled ops (NMS, RoIAlign, ...) are a small part of a detector's time next to
# torch's own convolutions. The built wheel is cached (keyed on Python tag, torch version and those
# flags) and later runs only install it.
#
# Usage:
#   scripts/build_mmcv.sh                 # build (or reuse) the wheel, install mmcv+mmdet+mmengine
#   scripts/build_mmcv.sh --wheel-only    # only build/cache the wheel, install nothing
# Environment:
#   PYTHON           interpreter of the target venv            (default: .venv/bin/python)
#   NFT_WHEEL_CACHE  where built wheels are kept               (default: ~/.cache/nft/wheels)
#   MAX_JOBS         parallel compile jobs (ninja)              (default: 2)
#   MMCV_CFLAGS      C/C++ flags of the compile                 (default: -O0 -g0)
#
# The venv's own setuptools is not touched: the old setuptools and ninja used for the build live
# in a throw-away directory put first on PYTHONPATH/PATH for the build only.
set -euo pipefail

MMCV_VERSION=2.1.0
MMDET_VERSION=3.3.0
MMENGINE_VERSION=0.10.7

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$here/.venv/bin/python}"
CACHE_ROOT="${NFT_WHEEL_CACHE:-$HOME/.cache/nft/wheels}"
export MAX_JOBS="${MAX_JOBS:-2}"
MMCV_CFLAGS="${MMCV_CFLAGS:--O0 -g0}"
wheel_only=0
[[ "${1:-}" == "--wheel-only" ]] && wheel_only=1

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "build_mmcv: $PYTHON cannot import torch; install torch first (make venv)." >&2
    exit 1
fi

# The compiled ops link against this exact torch, so the cache key includes its version, and the
# compile flags, so a wheel built another way is never taken for this one.
key="$("$PYTHON" - <<'EOF'
import sys, torch
print(f"cp{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__.replace('+', '_')}")
EOF
)-$(echo "$MMCV_CFLAGS" | tr -cd 'A-Za-z0-9')"
cache="$CACHE_ROOT/$key"
mkdir -p "$cache"
wheel="$(ls "$cache"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)"

if [[ -n "$wheel" ]]; then
    echo "build_mmcv: using cached wheel $wheel"
else
    echo "build_mmcv: no cached wheel for $key; compiling mmcv $MMCV_VERSION (several minutes, MAX_JOBS=$MAX_JOBS)"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    # Build-only tools, kept out of the venv.
    "$PYTHON" -m pip install --quiet --target "$work/tools" "setuptools<81" wheel ninja
    # Even `pip download` of an sdist runs setup.py for metadata, so it needs the old setuptools too.
    PYTHONPATH="$work/tools${PYTHONPATH:+:$PYTHONPATH}" \
        "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
        "mmcv==$MMCV_VERSION" -d "$work"
    tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
    src="$work/mmcv-$MMCV_VERSION"
    sed -i 's/-std=c++17/-std=c++20/g; s/-std=c++14/-std=c++20/g' "$src/setup.py"
    grep -q -- '-std=c++20' "$src/setup.py" || { echo "build_mmcv: C++20 patch did not apply" >&2; exit 1; }
    # CFLAGS takes the place of Python's own -O2 -g on every compile line.
    PYTHONPATH="$work/tools${PYTHONPATH:+:$PYTHONPATH}" PATH="$work/tools/bin:$PATH" \
        CFLAGS="$MMCV_CFLAGS" CXXFLAGS="$MMCV_CFLAGS" MMCV_WITH_OPS=1 "$PYTHON" -m pip wheel --no-deps --no-build-isolation \
        --wheel-dir "$work/dist" "$src"
    built="$(ls "$work"/dist/mmcv-"$MMCV_VERSION"-*.whl | head -n1)"
    # Move into place atomically so a concurrent reader never sees a half-written wheel.
    cp "$built" "$cache/.partial.whl"
    mv "$cache/.partial.whl" "$cache/$(basename "$built")"
    wheel="$cache/$(basename "$built")"
    echo "build_mmcv: cached $wheel"
fi

if [[ $wheel_only == 1 ]]; then
    exit 0
fi

# Install the cached wheel next to the pinned mmdet/mmengine; never let pip touch torch.
torch_pin="torch==$("$PYTHON" -c 'import torch; print(torch.__version__.split("+")[0])')"
"$PYTHON" -m pip install --quiet "$wheel" "mmdet==$MMDET_VERSION" "mmengine==$MMENGINE_VERSION" "$torch_pin"
"$PYTHON" -c "import mmcv.ops, mmdet; print('build_mmcv: mmcv', mmcv.__version__, 'mmdet', mmdet.__version__, 'ready')"
