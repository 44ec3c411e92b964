#!/usr/bin/env bash
# Builds (once) a cached venv with Rasa 3.6.21 and prints its python as the last stdout line.
# Rasa 3.6 installs only on Python 3.10, while voiceload runs on 3.11, so Rasa lives in its own venv
# outside the repository (2.7 GB) and is shared by every checkout and test run.
#   scripts/rasa-env.sh        -> /root/.cache/voiceload/rasa-3.6.21-py3.10.13/bin/python
# Python 3.10 comes from $VOICELOAD_PYTHON310, else pyenv, else python3.10 on PATH; none -> exit 2.
# Progress goes to stderr; stdout carries only the interpreter path.
set -euo pipefail

RASA_VERSION="3.6.21"
# Extra requirements installed next to rasa. Part of the stamp, so changing them re-runs pip.
EXTRA_REQS=()

say() { echo "rasa-env: $*" >&2; }

# True when "$1" runs and is CPython 3.10 (pyenv shims exist even when 3.10 is not selected).
is_py310() {
    [ -n "$1" ] && "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 10) else 1)' >/dev/null 2>&1
}

find_pyenv() {
    if command -v pyenv >/dev/null 2>&1; then
        command -v pyenv
    elif [ -x "$HOME/.pyenv/bin/pyenv" ]; then
        echo "$HOME/.pyenv/bin/pyenv"
    fi
}

find_python310() {
    if [ -n "${VOICELOAD_PYTHON310:-}" ]; then
        if is_py310 "$VOICELOAD_PYTHON310"; then echo "$VOICELOAD_PYTHON310"; return 0; fi
        say "VOICELOAD_PYTHON310=$VOICELOAD_PYTHON310 is not a working Python 3.10"
        return 1
    fi
    local pyenv_bin prefix root cand
    pyenv_bin="$(find_pyenv)"
    if [ -n "$pyenv_bin" ]; then
        prefix="$("$pyenv_bin" prefix 3.10 2>/dev/null || true)"
        if is_py310 "$prefix/bin/python"; then echo "$prefix/bin/python"; return 0; fi
        root="$("$pyenv_bin" root 2>/dev/null || true)"
        if [ -n "$root" ]; then
            # newest 3.10.x first
            while IFS= read -r cand; do
                if is_py310 "$cand/bin/python"; then echo "$cand/bin/python"; return 0; fi
            done < <(find "$root/versions" -maxdepth 1 -name '3.10.*' 2>/dev/null | sort -rV)
        fi
    fi
    cand="$(command -v python3.10 2>/dev/null || true)"
    if is_py310 "$cand"; then echo "$cand"; return 0; fi
    return 1
}

if ! PY310="$(find_python310)"; then
    say "no Python 3.10 found; Rasa $RASA_VERSION needs one." \
        "Set VOICELOAD_PYTHON310=/path/to/python3.10, or install it (e.g. 'pyenv install 3.10')."
    exit 2
fi

PYVER="$("$PY310" -c 'import platform; print(platform.python_version())')"
CACHE="${VOICELOAD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/voiceload}"
VENV="$CACHE/rasa-$RASA_VERSION-py$PYVER"
STAMP="$VENV/.voiceload-rasa-$(printf '%s\n' "$RASA_VERSION" "${EXTRA_REQS[@]}" | sha256sum | cut -c1-16)"

mkdir -p "$CACHE"
# One builder at a time: parallel test runs must not pip-install into the same venv.
exec 9>"$CACHE/.rasa-env.lock"
flock 9

if [ ! -f "$STAMP" ]; then
    started=$SECONDS
    say "building $VENV with Python $PYVER ($PY310); this takes a few minutes and ~2.7 GB"
    [ -x "$VENV/bin/python" ] || "$PY310" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "rasa==$RASA_VERSION" "${EXTRA_REQS[@]}" >&2
    "$VENV/bin/python" -c "import rasa, rasa.core.agent; assert rasa.__version__ == '$RASA_VERSION'" >&2
    rm -f "$VENV"/.voiceload-rasa-*
    touch "$STAMP"
    say "ready in $((SECONDS - started)) s"
fi

echo "$VENV/bin/python"
