#!/usr/bin/env bash
# Count executed aarch64 instructions under qemu-user: Debian's dynamic qemu-user (the static build
# has no -plugin), a TCG plugin (scripts/icount_plugin.c) built against qemu-plugin.h of the same
# qemu version, onnxruntime's aarch64 wheel, and a fake aarch64 /proc/cpuinfo (onnxruntime's cpuinfo
# library segfaults parsing the host's x86 one under qemu).
#
# Builds on scripts/setup_aarch64.sh (run first, cached). Idempotent and cached: a finished setup
# is recorded in $IC/.complete and a second run only re-checks that the plugin loads (~2 s).
# A cold run takes ~20 s plus the apt install (qemu-user ~12 MB; ~24 MB of qemu source, of which
# only the header is kept; ~23 MB onnxruntime wheel).
#
#   IC = $MCOPT_ICOUNT_ROOT or $MCOPT_AARCH64_ROOT/icount (~/.cache/mcopt/aarch64/icount)
#   $IC/include/qemu-plugin.h   from Debian's qemu source package of the installed qemu-user
#                               (apt-get source with a private deb-src list; or /usr/include if a
#                               package ships it; or $MCOPT_QEMU_PLUGIN_H, e.g. the header of the
#                               upstream tag v<version>: include/qemu/qemu-plugin.h)
#   $IC/libicount.so            the plugin: qemu-aarch64 -plugin $IC/libicount.so[,inline=on] ...
#   $IC/sysroot                 the aarch64 sysroot seen through symlinks (etc, lib, usr) plus
#                               proc/cpuinfo describing $IC/cpu: qemu-user's -L prefix lookup opens
#                               it for the guest's open("/proc/cpuinfo"); the shared sysroot is
#                               left as it is
#   $IC/site                    onnxruntime's manylinux aarch64 wheel (PYTHONPATH for the guest)
#   $IC/cpu                     the qemu -cpu model the cpuinfo describes (MCOPT_ICOUNT_CPU,
#                               default neoverse-n1)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
AROOT="${MCOPT_AARCH64_ROOT:-$HOME/.cache/mcopt/aarch64}"
IC="${MCOPT_ICOUNT_ROOT:-$AROOT/icount}"
CPU="${MCOPT_ICOUNT_CPU:-neoverse-n1}"
ORT_VERSION="${MCOPT_ICOUNT_ORT:-$(python3 -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null || true)}"
STAMP="$IC/.complete"

log() { echo "[setup_icount] $*" >&2; }
as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

# 0. the aarch64 sysroot (cached) ----------------------------------------------------------------
bash "$HERE/setup_aarch64.sh" >/dev/null
SYSROOT="$AROOT/sysroot"

# 1. Debian's dynamic qemu-user --------------------------------------------------------------------
if ! command -v qemu-aarch64 >/dev/null || ! qemu-aarch64 -h 2>/dev/null | grep -q -- '^-plugin'; then
    log "apt-get install qemu-user (the dynamic build: it loads TCG plugins)"
    as_root apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends qemu-user >/dev/null
fi
QEMU_VER="$(dpkg-query -W -f='${Version}' qemu-user)"
QEMU_SRC_VER="$(dpkg-query -W -f='${source:Version}' qemu-user)"
QEMU_UPSTREAM="$(qemu-aarch64 --version | sed -n '1s/.*version \([0-9.]*\).*/\1/p')"
command -v gcc >/dev/null || {
    log "apt-get install gcc"
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null
}
PLUGIN_SUM="$(sha256sum "$HERE/icount_plugin.c" | cut -c1-16)"
NCPU="$(python3 -c 'import os; print(os.cpu_count() or 1)')"
STAMP_TEXT="qemu=$QEMU_VER ort=$ORT_VERSION cpu=$CPU ncpu=$NCPU plugin=$PLUGIN_SUM layout=1"

check() {  # the plugin loads, a counting window opens and closes, onnxruntime imports
    [[ -f "$IC/libicount.so" && -f "$IC/sysroot/proc/cpuinfo" ]] || return 1
    local n
    n="$(env -i PATH="$PATH" PYTHONPATH="$IC/site" PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 \
        LD_LIBRARY_PATH=/lib/aarch64-linux-gnu:/usr/lib/aarch64-linux-gnu \
        qemu-aarch64 -L "$IC/sysroot" -cpu "$CPU" -plugin "$IC/libicount.so" \
        "$IC/sysroot/usr/bin/python3.11" -c "$1" 2>&1 | tail -1)"
    [[ "$n" =~ ^[0-9]+$ && "$n" -gt 0 ]]
}
WINDOW='import ctypes, os; r, w = os.pipe(); c = ctypes.CDLL(None); c.syscall(0x6d63, 1); sum(range(1000)); c.syscall(0x6d63, 2, w, 0); print(int(os.read(r, 64)))'

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_TEXT" ]] && check "$WINDOW"; then
    log "ready (cached): $IC"
    echo "$IC"
    exit 0
fi
mkdir -p "$IC/include" "$IC/site" "$IC/sysroot/proc" "$IC/wheels"

# 2. qemu-plugin.h of the installed qemu ------------------------------------------------------------
HDR="$IC/include/qemu-plugin.h"
if [[ ! -f "$HDR" || "$(cat "$IC/include/.version" 2>/dev/null)" != "$QEMU_SRC_VER" ]]; then
    rm -f "$HDR"
    for h in "${MCOPT_QEMU_PLUGIN_H:-}" /usr/include/qemu-plugin.h /usr/include/qemu/qemu-plugin.h; do
        if [[ -n "$h" && -f "$h" ]]; then
            log "qemu-plugin.h from $h"
            cp "$h" "$HDR"
            break
        fi
    done
fi
if [[ ! -f "$HDR" ]]; then
    log "qemu-plugin.h from Debian's source package qemu=$QEMU_SRC_VER"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/parts" "$tmp/src"
    # deb-src lines for the system's own deb entries (one-line and deb822 formats), in a private
    # apt configuration: the system's sources and package lists are not touched
    python3 - "$tmp/sources.list" <<'EOF'
import glob, re, sys
lines = []
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try:
        text = open(path).read()
    except OSError:
        continue
    for ln in text.splitlines():
        m = re.match(r"\s*deb\s+(.*)$", ln)
        if m:
            lines.append("deb-src " + m.group(1))
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in re.split(r"\n\s*\n", open(path).read()):
        f = {}
        for ln in stanza.splitlines():
            if ln.startswith("#") or ":" not in ln:
                continue
            k, v = ln.split(":", 1)
            f[k.strip().lower()] = v.strip()
        if "deb" not in f.get("types", "").split() or f.get("enabled", "yes") == "no":
            continue
        opt = f" [signed-by={f['signed-by']}]" if f.get("signed-by", "").startswith("/") else ""
        for uri in f.get("uris", "").split():
            for suite in f.get("suites", "").split():
                lines.append(f"deb-src{opt} {uri} {suite} {f.get('components', '')}".rstrip())
open(sys.argv[1], "w").write("\n".join(dict.fromkeys(lines)) + "\n")
EOF
    APTO=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=$tmp/parts"
          -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o "APT::Sandbox::User=root")
    no_source() {
        log "cannot download Debian's source package qemu=$QEMU_SRC_VER; set MCOPT_QEMU_PLUGIN_H to"
        log "include/qemu/qemu-plugin.h of qemu's upstream tag v$QEMU_UPSTREAM and run this again"
        exit 1
    }
    apt-get "${APTO[@]}" update -qq >/dev/null || no_source
    (cd "$tmp/src" && apt-get "${APTO[@]}" source --download-only -qq "qemu=$QEMU_SRC_VER" >/dev/null) \
        || no_source
    origs=("$tmp"/src/qemu_*.orig.tar.*)
    mkdir -p "$tmp/x" "$tmp/tree/include/qemu"
    tar -xf "${origs[0]}" -C "$tmp/x" --wildcards '*/include/qemu/qemu-plugin.h'
    cp "$tmp"/x/*/include/qemu/qemu-plugin.h "$tmp/tree/include/qemu/qemu-plugin.h"
    # Debian's patches that touch the header, in series order
    debs=("$tmp"/src/qemu_*.debian.tar.*)
    deb="${debs[0]}"
    if [[ -f "$deb" ]]; then
        tar -xf "$deb" -C "$tmp" debian/patches 2>/dev/null || true
        if [[ -f "$tmp/debian/patches/series" ]]; then
            while read -r p _; do
                [[ -z "$p" || "$p" == \#* ]] && continue
                if grep -q '^+++ .*include/qemu/qemu-plugin.h' "$tmp/debian/patches/$p"; then
                    log "applying Debian patch $p to qemu-plugin.h"
                    (cd "$tmp/tree" && patch -s -p1 -i "$tmp/debian/patches/$p" >/dev/null) || true
                fi
            done <"$tmp/debian/patches/series"
        fi
    fi
    cp "$tmp/tree/include/qemu/qemu-plugin.h" "$HDR"
fi
if [[ ! -f "$HDR" ]]; then
    log "no qemu-plugin.h: set MCOPT_QEMU_PLUGIN_H to include/qemu/qemu-plugin.h of qemu's"
    log "upstream tag v$QEMU_UPSTREAM and run this again"
    exit 1
fi
echo "$QEMU_SRC_VER" >"$IC/include/.version"

# 3. the plugin -----------------------------------------------------------------------------------
log "compiling the plugin: $IC/libicount.so"
gcc -O2 -shared -fPIC -fvisibility=hidden -Wall -Wextra -Wno-unused-parameter \
    -I "$IC/include" -o "$IC/libicount.so.tmp" "$HERE/icount_plugin.c"
mv "$IC/libicount.so.tmp" "$IC/libicount.so"

# 4. onnxruntime's aarch64 wheel -> $IC/site -----------------------------------------------------
spec="onnxruntime${ORT_VERSION:+==$ORT_VERSION}"
if [[ ! -f "$IC/site/.complete-$spec" ]]; then
    log "pip download $spec (manylinux aarch64, cp311)"
    rm -rf "$IC/wheels" "$IC/site"
    mkdir -p "$IC/wheels" "$IC/site"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
        --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 \
        --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
        -d "$IC/wheels" "$spec" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    python3 - "$IC/wheels" "$IC/site" <<'EOF'
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
    python3 -m compileall -q -j 0 "$IC/site" >/dev/null 2>&1 || true
    rm -f "$IC"/wheels/*.whl
    touch "$IC/site/.complete-$spec"
fi

# 5. the sysroot seen through symlinks + a fake /proc/cpuinfo for $CPU ---------------------------
for e in "$SYSROOT"/*; do
    ln -sfn "$e" "$IC/sysroot/$(basename "$e")"
done
python3 - "$CPU" "$NCPU" "$IC/sysroot/proc/cpuinfo" <<'EOF'
import sys
cpu, n, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
v8 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
v82 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs"
# qemu 7.2's MIDR of each model (target/arm/cpu64.c, cpu_tcg.c): implementer, variant, part, revision
models = {
    "cortex-a35": (0x41, 0x0, 0xD04, 1, v8),
    "cortex-a53": (0x41, 0x0, 0xD03, 4, v8),
    "cortex-a57": (0x41, 0x1, 0xD07, 0, v8),
    "cortex-a72": (0x41, 0x0, 0xD08, 3, v8),
    "cortex-a76": (0x41, 0x4, 0xD0B, 1, v82),
    "neoverse-n1": (0x41, 0x4, 0xD0C, 1, v82),
}
if cpu not in models:
    sys.exit(f"no fake /proc/cpuinfo for -cpu {cpu}; known: {', '.join(models)}")
impl, var, part, rev, feats = models[cpu]
block = (
    "processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: " + feats + "\n"
    f"CPU implementer\t: {impl:#x}\nCPU architecture: 8\nCPU variant\t: {var:#x}\n"
    f"CPU part\t: {part:#05x}\nCPU revision\t: {rev}\n\n"
)
open(path, "w").write("".join(block.format(i=i) for i in range(n)))
EOF
echo "$CPU" >"$IC/cpu"

if ! check "$WINDOW" || ! check 'import onnxruntime; print(1)'; then
    log "the counting plugin or onnxruntime does not work under qemu; run this to see why:"
    log "  qemu-aarch64 -L $IC/sysroot -cpu $CPU -plugin $IC/libicount.so $IC/sysroot/usr/bin/python3.11 -c 'import onnxruntime'"
    exit 1
fi
echo "$STAMP_TEXT" >"$STAMP"
log "ready: $IC"
echo "$IC"
