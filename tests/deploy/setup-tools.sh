#!/usr/bin/env bash
# Tools of the deploy checks (tests/deploy), installed by `make setup`; each step is skipped when done.
#
#   helm    a Python >= 3.12 venv with helm-sdkpy (Helm v4 as a library) at $1 (default .venv/helm):
#           the chart is rendered and linted with it.  Python 3.12+ comes from $HELM_PY, python3.12 /
#           python3.13 on PATH, or pyenv's versions.  None found: a warning, and the chart tests skip
#           (they fail under CI=true).
#   prom    Debian's prometheus (the dashboards' queries run against it): installed with apt-get only when
#           missing and when apt-get can be used (root); otherwise a warning, and that test skips
#           (fails under CI=true).
set -euo pipefail

HELM_VENV=${1:-.venv/helm}
# pinned: the renderer depends on the library's behaviour (Install, Lint, the release it returns)
HELM_PKGS="helm-sdkpy==0.1.32 pyyaml==6.0.4"

find_python312() {
    local cand
    for cand in ${HELM_PY:-} python3.12 python3.13 \
                "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3 \
                "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3; do
        [ -n "$cand" ] || continue
        # pyenv shims exist for versions that are not selected: run it to be sure
        if "$cand" -c 'import sys; raise SystemExit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
            command -v "$cand" 2>/dev/null || echo "$cand"
            return 0
        fi
    done
    return 1
}

setup_helm() {
    local stamp="$HELM_VENV/.setup-stamp"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$HELM_PKGS" ] && [ -x "$HELM_VENV/bin/python" ]; then
        return 0
    fi
    local py
    if ! py=$(find_python312); then
        echo "setup-tools: no Python >= 3.12 found (set HELM_PY, or install one with pyenv): the chart render" \
             "tests will skip (and fail under CI=true)" >&2
        return 0
    fi
    echo "setup-tools: helm-sdkpy environment in $HELM_VENV ($py)" >&2
    rm -rf "$HELM_VENV"
    "$py" -m venv "$HELM_VENV"
    # shellcheck disable=SC2086
    "$HELM_VENV/bin/python" -m pip install -q $HELM_PKGS
    echo "$HELM_PKGS" > "$stamp"
}

setup_prometheus() {
    if command -v prometheus >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "setup-tools: prometheus is not installed and apt-get cannot be used here" \
             "(apt-get install -y --no-install-recommends prometheus): the dashboard query test will skip" \
             "(and fail under CI=true)" >&2
        return 0
    fi
    echo "setup-tools: installing Debian's prometheus (not started as a service)" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1; then
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends prometheus >/dev/null
    fi
    # the package enables a systemd unit; nothing here runs systemd, and the tests start their own server
}

setup_helm
setup_prometheus
