#!/usr/bin/env bash
# Runs the whole qmq-rs test suite on a fresh machine.
# Makes sure the loopback databases the tests use (PostgreSQL, MariaDB, Redis) are up first.
set -euo pipefail
cd "$(dirname "$0")/.."

services=../shared/services.sh
if [ -x "$services" ] || [ -f "$services" ]; then
  bash "$services" postgres mariadb redis
fi

# The broker and the delay server must not link the client's SQL drivers or Redis.
./scripts/check-server-deps.sh

cargo test --workspace --all-features "$@"
