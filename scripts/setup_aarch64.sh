#!/usr/bin/env bash
# Set up an emulated aarch64 TVM runtime: qemu-user + an aarch64 Python 3.11 sysroot with the
# aarch64 wheels of apache-tvm / apache-tvm-ffi / numpy, and the aarch64 cross linker.
#
# Idempotent and cached: a finished setup is recorded in $ROOT/.complete (with the versions it was
# built for) and a second run only re-checks that the emulated interpreter starts (~1 s).
# A cold run takes ~30 s plus the apt installs (~110 MB of wheels, ~15 MB of .debs, ~400 MB on disk).
#
#   ROOT = $MCOPT_AARCH64_ROOT or ~/.cache/mcopt/aarch64
#   $ROOT/sysroot      Debian bookworm arm64 packages (python3.11 + libs), dpkg -x'ed
#   $ROOT/sysroot/usr/lib/python3/dist-packages   aarch64 wheels (tvm, tvm_ffi, numpy, ml_dtypes)
#   $ROOT/bin/python3  host wrapper: exec qemu-aarch64-static -L SYSROOT -0 <itself> python3.11 "$@"
#                      (argv0 = the wrapper, so sys.executable re-launches through qemu as well)
#
# Host packages (apt): qemu-user-static g++-aarch64-linux-gnu (pulls gcc-aarch64-linux-gnu).
# Needs network access to Debian's archive and PyPI the first time only.
set -euo pipefail

TVM_VERSION="${MCOPT_TVM_VERSION:-0.27.0.post1}"
TVM_FFI_VERSION="${MCOPT_TVM_FFI_VERSION:-0.1.14.post1}"
NUMPY_VERSION="${MCOPT_AARCH64_NUMPY:-$(python3 -c 'import numpy; print(numpy.__version__)' 2>/dev/null || echo 2.4.6)}"
ROOT="${MCOPT_AARCH64_ROOT:-$HOME/.cache/mcopt/aarch64}"
SYSROOT="$ROOT/sysroot"
WRAPPER="$ROOT/bin/python3"
STAMP="$ROOT/.complete"
STAMP_TEXT="tvm=$TVM_VERSION ffi=$TVM_FFI_VERSION numpy=$NUMPY_VERSION layout=2"

# Debian bookworm arm64 packages that python3.11 (+ ssl/sqlite/ctypes) and the TVM runtime need.
DEBS=(
    libc6 libgcc-s1 libstdc++6 gcc-12-base
    python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
    libexpat1 zlib1g libffi8 libssl3 libbz2-1.0 liblzma5 libzstd1 libsqlite3-0
    libncursesw6 libtinfo6 libreadline8 libuuid1 libdb5.3 libgdbm6 libcrypt1 libnsl2 libtirpc3
    libgssapi-krb5-2 libk5crypto3 libkeyutils1 libkrb5-3 libkrb5support0 libcom-err2
    libselinux1 libpcre2-8-0 libmd0 libacl1
)

log() { echo "[setup_aarch64] $*" >&2; }

check_runtime() {
    [[ -x "$WRAPPER" ]] || return 1
    env TVM_USE_RUNTIME_LIB=1 "$WRAPPER" -c \
        'import platform, numpy, tvm; assert platform.machine() == "aarch64"; print(tvm.__version__)' \
        >/dev/null 2>&1
}

quick_check() {  # the interpreter starts (~1 s); the full check imports tvm (~15 s under qemu)
    [[ -x "$WRAPPER" && -f "$SYSROOT/usr/lib/python3/dist-packages/tvm/__init__.py" ]] \
        && "$WRAPPER" -c 'import platform; assert platform.machine() == "aarch64"' >/dev/null 2>&1
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_TEXT" ]] && command -v qemu-aarch64-static >/dev/null \
    && command -v aarch64-linux-gnu-g++ >/dev/null && quick_check; then
    log "ready (cached): $WRAPPER"
    echo "$WRAPPER"
    exit 0
fi

as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

# 1. host tools --------------------------------------------------------------------------------
need=()
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
if ((${#need[@]})); then
    log "apt-get install ${need[*]}"
    as_root apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# 2. arm64 Debian packages -> sysroot ----------------------------------------------------------
mkdir -p "$ROOT/debs" "$ROOT/wheels" "$SYSROOT" "$ROOT/bin"
if [[ ! -x "$SYSROOT/usr/bin/python3.11" || ! -f "$ROOT/debs/.complete" ]]; then
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        log "dpkg --add-architecture arm64"
        as_root dpkg --add-architecture arm64
    fi
    pkgs=()
    for p in "${DEBS[@]}"; do pkgs+=("$p:arm64"); done
    if ! (cd "$ROOT/debs" && apt-get download -qq "${pkgs[@]}" >/dev/null 2>&1); then
        log "apt-get update (arm64 package lists)"
        as_root apt-get update -qq >/dev/null
        (cd "$ROOT/debs" && apt-get download -qq "${pkgs[@]}" >/dev/null)
    fi
    log "extracting $(ls "$ROOT"/debs/*.deb | wc -l) arm64 packages into $SYSROOT"
    for deb in "$ROOT"/debs/*_arm64.deb "$ROOT"/debs/*_all.deb; do
        [[ -f "$deb" ]] && dpkg -x "$deb" "$SYSROOT"
    done
    touch "$ROOT/debs/.complete"
fi

# 3. aarch64 wheels -> sysroot dist-packages ---------------------------------------------------
SITE="$SYSROOT/usr/lib/python3/dist-packages"
mkdir -p "$SITE"
if [[ ! -f "$ROOT/wheels/.complete-$TVM_VERSION-$TVM_FFI_VERSION-$NUMPY_VERSION" ]]; then
    log "pip download aarch64 wheels (apache-tvm==$TVM_VERSION apache-tvm-ffi==$TVM_FFI_VERSION numpy==$NUMPY_VERSION)"
    rm -f "$ROOT"/wheels/*.whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
        --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
        -d "$ROOT/wheels" "apache-tvm==$TVM_VERSION" "apache-tvm-ffi==$TVM_FFI_VERSION" \
        "numpy==$NUMPY_VERSION" ml_dtypes typing_extensions psutil cloudpickle \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    log "unpacking wheels into $SITE"
    python3 - "$ROOT/wheels" "$SITE" <<'EOF'
import pathlib, sys, zipfile
wheels, site = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for whl in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            out = z.extract(info, site)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                pathlib.Path(out).chmod(mode)
EOF
    touch "$ROOT/wheels/.complete-$TVM_VERSION-$TVM_FFI_VERSION-$NUMPY_VERSION"
fi

# 4. byte-compile with the host's Python 3.11 (same .pyc magic): the emulated interpreter never
#    writes .pyc files (PYTHONDONTWRITEBYTECODE in the wrapper) and compiling under qemu on every
#    start would triple its start-up time.
if [[ ! -f "$ROOT/.compiled" || "$(cat "$ROOT/.compiled")" != "$STAMP_TEXT" ]]; then
    log "byte-compiling the sysroot's Python files"
    python3 -m compileall -q -j 0 "$SYSROOT/usr/lib/python3.11" "$SITE" >/dev/null 2>&1 || true
    echo "$STAMP_TEXT" >"$ROOT/.compiled"
fi

# 5. the wrapper --------------------------------------------------------------------------------
cat >"$WRAPPER" <<EOF
#!/bin/sh
# aarch64 python3.11 under qemu-user (generated by scripts/setup_aarch64.sh).
# -0 makes sys.executable this wrapper, so subprocesses that re-launch Python go through qemu too.
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP PYTHONUSERBASE LD_PRELOAD
export PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1
export LD_LIBRARY_PATH=/lib/aarch64-linux-gnu:/usr/lib/aarch64-linux-gnu
exec qemu-aarch64-static -L "$SYSROOT" -0 "$WRAPPER" "$SYSROOT/usr/bin/python3.11" "\$@"
EOF
chmod +x "$WRAPPER"

if ! check_runtime; then
    log "the emulated runtime does not start; run this to see why:"
    log "  TVM_USE_RUNTIME_LIB=1 $WRAPPER -c 'import tvm'"
    exit 1
fi
echo "$STAMP_TEXT" >"$STAMP"
log "ready: $WRAPPER"
echo "$WRAPPER"
