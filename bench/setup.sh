#!/usr/bin/env bash
# Prepares what `make bench` needs and only what is missing (never part of `make test`):
#   .bench-venv        the project's runtime requirements + the Python peers (bench/requirements.txt),
#                      re-installed only when a requirements file changes;
#   bench/node_modules the Node peers pinned by bench/package-lock.json (npm ci), only when it changes.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

stamp=".bench-venv/.requirements.sha256"
sum=$(cat requirements.txt bench/requirements.txt | sha256sum | cut -d' ' -f1)
if [ ! -x .bench-venv/bin/python ]; then
  say "python3 -m venv .bench-venv"
  python3 -m venv .bench-venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
  say "pip install -r bench/requirements.txt (bench only)"
  .bench-venv/bin/python -m pip install -q --disable-pip-version-check -r bench/requirements.txt
  echo "$sum" > "$stamp"
fi

npm_stamp="bench/node_modules/.package-lock.sha256"
npm_sum=$(cat bench/package.json bench/package-lock.json | sha256sum | cut -d' ' -f1)
if [ "$(cat "$npm_stamp" 2>/dev/null)" != "$npm_sum" ]; then
  say "npm ci in bench/ (graphile-worker, bench only)"
  npm ci --prefix bench --no-audit --no-fund --loglevel=error
  echo "$npm_sum" > "$npm_stamp"
fi
