#!/usr/bin/env bash
# Idempotent installer for a fresh Debian 12 machine (as root) or an already set-up one.
#   scripts/setup.sh           runtime: apt packages for audio + the venv with voiceload
#   scripts/setup.sh --test    also the test-only peers (mosquitto, SIPp, tcpdump) and test deps
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

PY="${VOICELOAD_PYTHON:-python3}"
# gcc + libc6-dev: the editable install compiles the agents' RTP engine (voiceload/media/*.c), which
# links libopus (Opus), libsrtp2 (SRTP) and spandsp (G.722); voiceload's pjsua2 build links libopus0,
# libsrtp2-1 and libssl3 at run time (the -dev packages pull the first two in)
apt_pkgs=(espeak-ng sox libsndfile1 gcc libc6-dev libopus-dev libsrtp2-dev libspandsp-dev libssl3)
# Debian's own python3 needs python3-venv for `python3 -m venv` (ensurepip), and python3-dev for Python.h
"$PY" -c "import ensurepip" 2>/dev/null || apt_pkgs+=(python3-venv)
"$PY" -c "import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h'))" \
    2>/dev/null || apt_pkgs+=(python3-dev)
# test peers: baresip (a SIP/SRTP/Opus/G.722 UA), rtpengine (a media relay), Asterisk's sound files
[ "$want_test" = 1 ] && apt_pkgs+=(mosquitto sip-tester tcpdump chromium kamailio kamailio-tls-modules openssl
    baresip rtpengine-daemon asterisk-core-sounds-en-wav)

missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The venv lives in .venv/; re-install only when pyproject.toml or the C engine changed (stamp keyed
# by their hash: the editable install compiles voiceload/media/*.c).
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
extra=""; [ "$want_test" = 1 ] && extra="[test]"
stamp=".venv/.voiceload-$(cat pyproject.toml voiceload/media/*.[ch] | sha256sum | cut -c1-16)${want_test}"
if [ ! -f "$stamp" ]; then
    echo "setup: installing python dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    # a failed install (a C compile error, say) must stop here, not hide behind a stale build in the tree
    if ! .venv/bin/python -m pip install -q -e ".${extra}" > .venv/pip-install.log 2>&1; then
        cat .venv/pip-install.log >&2; echo "setup: pip install failed" >&2; exit 1
    fi
    .venv/bin/python -c "import voiceload, voiceload.media._rtpengine, pjsua2" || { echo "setup: install failed" >&2; exit 1; }
    rm -f .venv/.voiceload-*
    touch "$stamp"
    # a test install also satisfies a runtime one
    if [ "$want_test" = 1 ]; then touch "${stamp%1}0"; fi
fi
# pjsua2: voiceload's dense build (1024 calls per process, scripts/build-pjsua2.sh, docs/density.md)
# when it is built, the PyPI wheel (4 calls per process) otherwise. The test setup builds it (cached
# outside the repo, about 4-5 min once), as does `make pjsua2`; a runtime setup installs it when the
# cached wheel exists, and rebuilds it when an older dense build is installed. A failed build leaves
# the PyPI wheel. VOICELOAD_PJSUA2=pypi puts the PyPI wheel back.
dense_installed() { .venv/bin/python -c 'import importlib.metadata as m; assert "+voiceload" in m.version("pjsua2-python")' 2>/dev/null; }
if [ "${VOICELOAD_PJSUA2:-}" = pypi ]; then
    if dense_installed; then
        echo "setup: VOICELOAD_PJSUA2=pypi: replacing the dense pjsua2 build with the PyPI wheel"
        .venv/bin/python -m pip install -q --force-reinstall --no-deps "pjsua2-python>=2.15,<2.16"
    fi
elif [ "$want_test" = 1 ] || [ "${VOICELOAD_PJSUA2:-}" = dense ] || bash scripts/build-pjsua2.sh --check \
        || dense_installed; then
    bash scripts/build-pjsua2.sh || echo "setup: the dense pjsua2 build failed; using the PyPI wheel (4 calls per process)" >&2
fi
exit 0
