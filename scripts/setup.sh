#!/usr/bin/env bash
# Installs what `make test` / `make run` need, and only what is missing:
#   PostgreSQL 15 + pg_cron + pgTAP + pg_prove + plpgsql_check, and PgBouncer (apt, when root;
#   else prints the command),
#   .venv with requirements-dev.txt (re-installed only when a requirements file changes),
#   this project itself, editable, for the `oracle` console (re-installed only when needed),
#   the Supabase CLI pinned in package.json (npm ci, only when the lock file changes).
set -euo pipefail
cd "$(dirname "$0")/.."

PG_BIN=/usr/lib/postgresql/15/bin
PG_EXT=/usr/share/postgresql/15/extension
APT_PACKAGES="postgresql-15 postgresql-15-cron postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl"
APT_PACKAGES="$APT_PACKAGES postgresql-15-plpgsql-check pgbouncer"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

need_apt=""
[ -x "$PG_BIN/initdb" ] || need_apt=1
[ -f "$PG_EXT/pg_cron.control" ] || need_apt=1
[ -f "$PG_EXT/pgtap.control" ] || need_apt=1
[ -f "$PG_EXT/plpgsql_check.control" ] || need_apt=1
[ -x /usr/sbin/pgbouncer ] || need_apt=1
command -v pg_prove >/dev/null 2>&1 || need_apt=1
command -v psql >/dev/null 2>&1 || need_apt=1
command -v npm >/dev/null 2>&1 || { need_apt=1; APT_PACKAGES="$APT_PACKAGES nodejs npm"; }
python3 -c 'import venv, ensurepip' 2>/dev/null || { need_apt=1; APT_PACKAGES="$APT_PACKAGES python3-venv"; }

if [ -n "$need_apt" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "PostgreSQL 15 with pg_cron, pgTAP and plpgsql_check, PgBouncer (or npm) is missing." >&2
    echo "Install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y $APT_PACKAGES" >&2
    exit 1
  fi
  say "apt-get install $APT_PACKAGES"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $APT_PACKAGES >/dev/null
  # Debian starts a default cluster on 5432 and a PgBouncer on 6432; the project uses neither (the
  # tests start their own).
  command -v pg_ctlcluster >/dev/null 2>&1 && pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
  [ -x /etc/init.d/pgbouncer ] && /etc/init.d/pgbouncer stop >/dev/null 2>&1 || true
fi

req_stamp=".venv/.requirements.sha256"
req_sum=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
  say "python3 -m venv .venv"
  python3 -m venv .venv
fi
if [ "$(cat "$req_stamp" 2>/dev/null)" != "$req_sum" ]; then
  say "pip install -r requirements-dev.txt"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
  echo "$req_sum" > "$req_stamp"
fi

# The project, editable (`.venv/bin/oracle`, SPEC §7). An editable install records this checkout's
# absolute path, and one .venv may serve several checkouts (a copy moved elsewhere, git worktrees
# sharing it through a symlink): re-install whenever the recorded path is not this checkout's
# (read from the installed distribution's direct_url.json, whoever installed it) or pyproject.toml
# changed. Only `console` and `shared` are mapped (setuptools' editable finder, no path added to
# sys.path), so the install never shadows another checkout's modules.
root=$(pwd -P)
dist_stamp=".venv/.editable.sha256"
dist_sum=$(sha256sum < pyproject.toml | cut -d' ' -f1)
recorded=$(.venv/bin/python -I -c 'import json, urllib.parse as u, importlib.metadata as m
url = json.loads(m.distribution("auto-invest-oracle-execution").read_text("direct_url.json") or "{}").get("url", "")
print(u.unquote(u.urlparse(url).path))' 2>/dev/null || true)
if [ ! -x .venv/bin/oracle ] || [ "$recorded" != "$root" ] || [ "$(cat "$dist_stamp" 2>/dev/null)" != "$dist_sum" ]; then
  say "pip install --no-deps -e . (oracle → $root)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  rm -rf ./*.egg-info  # setuptools' build-time metadata; the install keeps its own dist-info
  echo "$dist_sum" > "$dist_stamp"
fi

npm_stamp="node_modules/.package-lock.sha256"
npm_sum=$(cat package.json package-lock.json 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ -f package.json ] && { [ ! -x node_modules/.bin/supabase ] || [ "$(cat "$npm_stamp" 2>/dev/null)" != "$npm_sum" ]; }; then
  say "npm ci (Supabase CLI)"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$npm_sum" > "$npm_stamp"
fi
