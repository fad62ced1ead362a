#!/usr/bin/env bash
# Runs the original QMQ Java client against `qmq standalone` (compat/java/Compat.java), as named
# checks that each print `CHECK <name>: OK|FAILED (<details>)`: messages (100 tagged messages with a
# property), delay (a 3 s delayed message), retry-timing (a failed delivery comes back no earlier
# than the broker's retry delay), dead-letters (after setMaxRetryNum failures a message lands on
# %DEAD_RETRY%<subject>%<group>), tags (AND/OR subscriptions), broadcast (two clients each get every
# message), pull-api (the pull consumer pulls, acks and nacks) and new-group-start (a new group
# starts at the latest message, as in QMQ). Exits non-zero if any check fails.
#
# The client is compiled from a local git copy of github.com/qunarcorp/qmq (nothing of it is kept
# in this repository), against Debian's Java packages; compat/java/stubs holds a no-op stand-in
# for the opentracing API, which Debian does not package. Not part of CI: it needs that copy.
# qmq is built in release mode under $CARGO_TARGET_DIR (default: target/). When `qmq standalone`
# has `--retry-delay-secs`, the server is started with a 2 s retry delay to keep the run short;
# otherwise the broker's default (5 s, QMQ's) is assumed.
#
#   scripts/java-compat.sh [path to a qmq git repository] [check name...]
#   (default repository: /work/.mirror/qunarcorp+qmq/repo; no check names: all checks)
set -euo pipefail

repo=${1:-/work/.mirror/qunarcorp+qmq/repo}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
case $target in /*) ;; *) target=$root/$target ;; esac
work=$(mktemp -d)
server=
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

git -C "$repo" rev-parse --verify -q HEAD >/dev/null || { echo "no qmq git repository at $repo" >&2; exit 2; }
command -v javac >/dev/null || { echo "javac (a JDK) is needed" >&2; exit 2; }

jars="guava netty-buffer netty-codec netty-common netty-handler netty-resolver netty-transport
netty-transport-native-epoll netty-transport-native-unix-common netty-codec-http slf4j-api
logback-classic logback-core gson spring3-context spring3-jdbc spring3-beans spring3-core
spring3-transaction spring3-aop spring3-expression geronimo-annotation-1.3-spec"
cp=
for j in $jars; do cp="$cp:/usr/share/java/$j.jar"; done
cp=${cp#:}
if ! ls ${cp//:/ } >/dev/null 2>&1; then
    echo "installing the client's dependencies from Debian"
    apt-get install -y -q libnetty-java libguava-java libslf4j-java liblogback-java \
        libgoogle-gson-java libspring-context-java libspring-jdbc-java libgeronimo-annotation-1.3-spec-java >/dev/null
fi

echo "compiling the QMQ Java client ($(git -C "$repo" rev-parse --short HEAD))"
mkdir -p "$work/src" "$work/classes"
git -C "$repo" archive HEAD qmq-api qmq-common qmq-remoting qmq-client | tar -x -C "$work/src"
find "$work/src" -path '*/src/main/java/*' -name '*.java' > "$work/sources"
find "$root/compat/java/stubs" -name '*.java' >> "$work/sources"
echo "$root/compat/java/Compat.java" >> "$work/sources"
javac -nowarn -encoding UTF-8 -cp "$cp" -d "$work/classes" @"$work/sources" 2>&1 | grep -v '^Note:' || true
[ -f "$work/classes/Compat.class" ] || { echo "the client did not compile" >&2; exit 1; }

echo "building qmq"
(cd "$root" && cargo build --release -q -p qmq)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
broker=$(free_port) http=$(free_port) tcp=$(free_port) delay=$(free_port)
qmq=$target/release/qmq
retry_delay=5
extra=()
if grep -q -- '--retry-delay-secs' <<<"$("$qmq" standalone --help)"; then
    retry_delay=2
    extra=(--retry-delay-secs "$retry_delay")
fi
"$qmq" standalone --data-dir "$work/data" --listen "127.0.0.1:$broker" \
    --meta-http-listen "127.0.0.1:$http" --meta-tcp-listen "127.0.0.1:$tcp" \
    --delay-listen "127.0.0.1:$delay" "${extra[@]}" > "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
    grep -q 'qmq standalone ready' "$work/server.log" && break
    kill -0 "$server" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
    sleep 0.2
done
grep -q 'qmq standalone ready' "$work/server.log" || { echo "server did not start" >&2; exit 1; }

echo "running the checks (broker retry delay ${retry_delay} s)"
status=0
java -Dlogback.configurationFile="$root/compat/java/logback.xml" -cp "$work/classes:$cp" \
    Compat "http://127.0.0.1:$http/meta/address" "$retry_delay" "$@" || status=$?
if [ "$status" -ne 0 ]; then
    echo "--- last lines of the server log" >&2
    tail -n 30 "$work/server.log" >&2
fi
exit "$status"
