#!/usr/bin/env bash
# Servers link only what they use: the broker and the delay server reach brokers and the meta
# server through qmq-transport, not the whole client, so no SQL driver or Redis client may be in
# their (normal) dependency graph. Reads Cargo.lock; needs no network. Exits 1 naming what it found.
set -euo pipefail
cd "$(dirname "$0")/.."

# Captured first: with pipefail, `grep -q` closing the pipe early could fail the pipeline and
# hide a match.
deps=$(cargo tree -p qmq-broker -p qmq-delay -e normal --prefix none)
found=$(grep -E '^(sqlx|redis) ' <<<"$deps" | sort -u || true)
if [ -n "$found" ]; then
  echo "error: qmq-broker or qmq-delay depends on sqlx or redis; servers must use qmq-transport, not qmq-client:" >&2
  echo "$found" >&2
  exit 1
fi
echo "server dependencies: no sqlx, no redis in qmq-broker or qmq-delay"
