#!/usr/bin/env bash
# Postroom's benchmarks, with what they need: the repo's .venv (+ py-spy), nodemailer from npm
# into bench/node_modules, postfix's smtp-sink from Debian, PostgreSQL on 127.0.0.1:5432 when
# there is one. Every step is skipped when already done. Arguments go to run.py:
#   bench/run.sh            the full run, writes bench/RESULTS.md (about 12 min; --reps 5: 15)
#   bench/run.sh --quick    a ~2-minute smoke, writes bench/.work/RESULTS-quick.md
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$BENCH")"
VENV="$REPO/.venv"

say() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }

# make's own stamp: a no-op when .venv is installed and newer than pyproject.toml
make -s -C "$REPO" .venv/.installed
if [ ! -x "$VENV/bin/py-spy" ]; then
    say "installing py-spy into .venv"
    "$VENV/bin/pip" install --quiet py-spy
fi

if [ ! -f "$BENCH/node_modules/nodemailer/package.json" ]; then
    command -v npm >/dev/null || { echo "npm is needed for the nodemailer reference" >&2; exit 1; }
    say "installing nodemailer"
    (cd "$BENCH" && npm ci --no-audit --no-fund --loglevel=error)
fi

if [ ! -x /usr/sbin/smtp-sink ]; then
    [ "$(id -u)" = 0 ] || { echo "smtp-sink is missing: apt-get install postfix as root" >&2; exit 1; }
    say "installing postfix for smtp-sink (not configured, not started)"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q postfix >/dev/null; then
        apt-get update -q >/dev/null
        apt-get install -y -q postfix >/dev/null
    fi
fi

if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        say "starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    fi
fi

cd "$REPO"
exec "$VENV/bin/python" "$BENCH/run.py" "$@"
