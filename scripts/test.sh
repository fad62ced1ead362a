#!/usr/bin/env bash
# Runs the whole qmq-rs test suite; extra arguments go to `cargo test`.
#
# First scripts/services.sh makes the services some tests need (PostgreSQL, MariaDB, Redis) answer
# where this machine allows (start, or install as root with apt-get). Tests whose service is still
# absent skip themselves, and every skip is listed at the end (tests append to QMQ_TEST_SKIP_LOG;
# cargo hides the output of passing tests). With QMQ_TEST_REQUIRE_SERVICES=1 (as .ci/run sets, or
# CI=true) an absent service fails its tests instead. Service URLs: QMQ_TEST_POSTGRES_URL,
# QMQ_TEST_MYSQL_URL, QMQ_TEST_REDIS_URL (defaults in crates/testkit).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh postgres mariadb redis || true

skip_log=$(mktemp "${TMPDIR:-/tmp}/qmq-test-skips.XXXXXX")
export QMQ_TEST_SKIP_LOG=$skip_log

summary() {
  if [ -s "$skip_log" ]; then
    echo
    echo "Skipped $(wc -l <"$skip_log") test(s), service not reachable (QMQ_TEST_REQUIRE_SERVICES=1 makes these failures):"
    sort "$skip_log"
  fi
  rm -f "$skip_log"
}
trap summary EXIT

# The broker and the delay server must not link the client's SQL drivers or Redis.
./scripts/check-server-deps.sh

cargo test --workspace --all-features "$@"
