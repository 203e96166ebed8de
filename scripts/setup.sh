#!/usr/bin/env bash
# One idempotent set-up step shared by ./dev, .ci/run and the Dockerfile: system packages, the Python venv,
# and the bot page's npm packages. Re-running it does only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

need_apt=()
for pair in chromium:chromium espeak-ng:espeak-ng sox:sox ip:iproute2 unshare:util-linux; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need_apt+=("${pair#*:}")
done
[ -e /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ] || need_apt+=(fonts-noto-cjk)
if [ -f bot_page/package-lock.json ] && ! command -v npm >/dev/null 2>&1; then need_apt+=(nodejs npm); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  say "installing system packages: ${need_apt[*]} (about a minute)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
stamp_py=$(cat pyproject.toml scripts/requirements-no-deps.txt | sha256sum | cut -c1-16)
if [ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$stamp_py" ]; then
  say "installing Python packages into .venv (first time: a few minutes)"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev]'
  .venv/bin/pip install -q --no-deps -r scripts/requirements-no-deps.txt
  echo "$stamp_py" > .venv/.setup-stamp
fi

if [ -f bot_page/package-lock.json ]; then
  stamp_js=$(sha256sum bot_page/package-lock.json | cut -c1-16)
  if [ "$(cat bot_page/node_modules/.setup-stamp 2>/dev/null)" != "$stamp_js" ]; then
    say "installing the bot page's npm packages"
    (cd bot_page && npm ci --no-audit --no-fund --loglevel=error)
    echo "$stamp_js" > bot_page/node_modules/.setup-stamp
  fi
fi
say "ready"
