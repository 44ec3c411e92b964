#!/usr/bin/env bash
# Build voiceload's dense pjsua2 (1024 calls per process) and install it into .venv.
#
# The PyPI pjsua2 wheel allows 4 calls per process, so 1000 calls would take 250 agent processes.
# This builds pjproject with scripts/pjsua2/config_site.h (+ scripts/pjsua2/*.patch), wraps the
# SWIG Python module into a wheel cached outside the repo, keyed by the pjproject version and a
# hash of our build inputs, and installs it. A cached wheel makes a re-run take a second.
#
#   scripts/build-pjsua2.sh            build if needed, install into .venv
#   scripts/build-pjsua2.sh --check    exit 0 if the cached wheel for these inputs exists
#   scripts/build-pjsua2.sh --wheel    build if needed, print the cached wheel's path, install nothing
#
# Media: PCMU, PCMA and G.722 are pjmedia's own; Opus comes from Debian's libopus, SRTP (SDES) from
# Debian's libsrtp2 (--with-external-srtp), so both are the system's patched libraries.
# VOICELOAD_VENV names another venv to build for and install into (default: .venv).
#
# Source: the upstream pjproject tarball when reachable, else Debian's `ring` source package,
# which carries a complete pjproject 2.12.1 tree (deb-src is enabled for it if needed).
# Licence: pjproject is GPL-2.0-or-later, and so is voiceload.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)

PJ_VERSION=2.12.1
cache="${VOICELOAD_CACHE:-$HOME/.cache/voiceload}"
venv="${VOICELOAD_VENV:-$here/.venv}"
py="$venv/bin/python"
shopt -s nullglob
patches=(scripts/pjsua2/*.patch)
inputs_hash=$(cat scripts/build-pjsua2.sh scripts/pjsua2/config_site.h scripts/pjsua2/make_wheel.py "${patches[@]}" \
    | sha256sum | cut -c1-12)
local_version="${PJ_VERSION}+voiceload.${inputs_hash}"
wheel_dir="$cache/wheels"
pytag=$("$py" -c 'import sys; print(f"cp{sys.version_info.major}{sys.version_info.minor}")')
wheel="$wheel_dir/pjsua2_python-${local_version}-${pytag}-${pytag}-linux_$(uname -m).whl"

if [ "${1:-}" = "--check" ]; then
    [ -f "$wheel" ]
    exit
fi
wheel_only=0
[ "${1:-}" = "--wheel" ] && wheel_only=1

installed=$("$py" -c 'import importlib.metadata as m; print(m.version("pjsua2-python"))' 2>/dev/null || true)
if [ -f "$wheel" ] && { [ "$wheel_only" = 1 ] || [ "$installed" = "$local_version" ]; }; then
    [ "$wheel_only" = 1 ] && echo "$wheel"
    exit 0
fi

log() { echo "build-pjsua2: $*"; }

if [ ! -f "$wheel" ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    need=()
    for p in build-essential swig dpkg-dev xz-utils libssl-dev libopus-dev libsrtp2-dev pkg-config; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
    done
    if [ ${#need[@]} -gt 0 ]; then
        log "installing Debian packages: ${need[*]}"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi

    src_root="$cache/src"
    mkdir -p "$src_root"
    tree=$(ls -d "$src_root"/pjproject-"$PJ_VERSION" 2>/dev/null || true)
    if [ -z "$tree" ]; then
        tarball="$src_root/pjproject-$PJ_VERSION.tar.gz"
        if curl -fsSL --max-time 60 -o "$tarball.part" \
                "https://github.com/pjsip/pjproject/archive/refs/tags/$PJ_VERSION.tar.gz" 2>/dev/null; then
            log "source: upstream pjproject $PJ_VERSION"
            mv "$tarball.part" "$tarball"
            tar xzf "$tarball" -C "$src_root"
        else
            rm -f "$tarball.part"
            log "source: Debian's ring source package (upstream tarball not reachable)"
            if ! apt-get source --print-uris ring >/dev/null 2>&1; then
                log "enabling deb-src for bookworm"
                printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
                    | $SUDO tee /etc/apt/sources.list.d/voiceload-deb-src.sources >/dev/null
                $SUDO apt-get update -qq
            fi
            (cd "$src_root" && apt-get source --download-only ring >/dev/null 2>&1)
            orig=$(ls "$src_root"/ring_*.orig.tar.* | head -1)
            tmp="$src_root/ring-extract"
            rm -rf "$tmp" && mkdir -p "$tmp"
            tar xf "$orig" -C "$tmp" --wildcards '*/daemon/contrib/tarballs-unpacked/pjproject-*'
            found=$(find "$tmp" -maxdepth 8 -type f -name version.mak -path '*pjproject-*' | head -1)
            [ -n "$found" ] || { log "no pjproject tree in $orig" >&2; exit 1; }
            mv "$(dirname "$found")" "$src_root/pjproject-$PJ_VERSION"
            rm -rf "$tmp"
        fi
        tree="$src_root/pjproject-$PJ_VERSION"
    fi

    build="$cache/build/pjproject-$local_version"
    rm -rf "$build" && mkdir -p "$(dirname "$build")"
    cp -a "$tree" "$build"
    cp scripts/pjsua2/config_site.h "$build/pjlib/include/pj/config_site.h"
    for p in "${patches[@]}"; do
        log "applying $(basename "$p")"
        patch -d "$build" -p1 -s <"$p"
    done

    log "configuring pjproject $PJ_VERSION (epoll, OpenSSL for TLS, Opus, libsrtp2, no video, no sound device)"
    cd "$build"
    chmod +x configure aconfigure 2>/dev/null || true
    CFLAGS="-O2 -fPIC -DNDEBUG" CXXFLAGS="-O2 -fPIC -DNDEBUG" ./configure --enable-epoll \
        --disable-video --disable-sound --disable-gsm-codec --disable-speex-codec --disable-speex-aec \
        --disable-ilbc-codec --disable-g7221-codec --with-external-srtp --disable-libyuv \
        --disable-libwebrtc --disable-sdl --disable-ffmpeg --disable-v4l2 --disable-openh264 \
        --disable-silk --disable-bcg729 >"$build/configure.log" 2>&1 \
        || { tail -20 "$build/configure.log" >&2; exit 1; }
    # configure leaves out what it cannot find without failing: a missing -dev package must not
    # give a wheel that silently lacks Opus or SRTP
    grep -q "PJMEDIA_HAS_OPUS_CODEC 1" pjmedia/include/pjmedia-codec/config_auto.h \
        || { log "configure found no Opus (is libopus-dev installed?)" >&2; exit 1; }
    grep -q "^checking if external SRTP devkit is installed... yes: version 2" "$build/configure.log" \
        || { log "configure found no libsrtp2 (is libsrtp2-dev installed?)" >&2; exit 1; }
    log "building pjproject (about 1.5 min on 2 cores)"
    { make dep && make -j"$(nproc)" lib; } >"$build/make.log" 2>&1 \
        || { tail -30 "$build/make.log" >&2; exit 1; }

    log "building the SWIG Python module (about 2.5 min)"
    cd pjsip-apps/src/swig/python
    # SWIG's -threads makes every C call release the GIL: pjsua2's own threads never wait on Python
    sed -i 's/^#USE_THREADS/USE_THREADS/' Makefile
    make PYTHON_EXE="$py" >"$build/swig.log" 2>&1 || { tail -30 "$build/swig.log" >&2; exit 1; }

    so=$(find build -name '_pjsua2*.so' | head -1)
    [ -n "$so" ] || { log "SWIG build produced no _pjsua2 module" >&2; exit 1; }
    strip --strip-unneeded "$so"
    mkdir -p "$wheel_dir"
    "$py" "$here/scripts/pjsua2/make_wheel.py" --out "$wheel" --version "$local_version" \
        --module pjsua2.py --extension "$so" --licence "$build/COPYING"
    cd "$here"
    rm -rf "$build"
    log "cached $wheel"
fi

if [ "$wheel_only" = 1 ]; then
    echo "$wheel"
    exit 0
fi
log "installing $(basename "$wheel") into $venv"
"$py" -m pip install -q --no-deps --force-reinstall "$wheel"
"$py" -c "import pjsua2" || { log "the built module does not import" >&2; exit 1; }
