#!/usr/bin/env bash
# Runs the original QMQ Java client against `qmq standalone` (compat/java/Compat.java), as named
# checks that each print `CHECK <name>: OK|FAILED (<details>)`: messages (100 tagged messages with a
# property), delay (a 3 s delayed message), retry-timing (a failed delivery comes back no earlier
# than the broker's retry delay), dead-letters (after setMaxRetryNum failures a message lands on
# %DEAD_RETRY%<subject>%<group>), tags (AND/OR subscriptions), broadcast (two clients each get every
# message), pull-api (the pull consumer pulls, acks and nacks) and new-group-start (a new group
# starts at the latest message, as in QMQ), rust-body (the Rust client's text and bytes bodies, sent
# by its body_producer example, read by the Java consumer as documented), and failover (issue #14 test 7, see below). Exits
# non-zero if any check fails.
#
# failover runs in a JVM of its own against a replicated cluster the script starts for it: `qmq meta`
# and the two members of one broker group (`--replication sync --flush sync`). The Java side gets
# the master's PID (-Dcompat.failover.masterPid) and kills it with `kill -9` half-way while its
# producer (through the meta server) keeps sending and its listener consumer keeps consuming; every
# message the producer saw acknowledged must then be consumed. Once the slave is promoted the script
# starts the killed member again, so that it rejoins as the new master's slave: with synchronous
# replication a master without a slave answers every send "not replicated" after the replication
# timeout (--on-replication-timeout fail, the default), for any client. It needs its own JVM
# because the client's meta-server connection is a process-wide singleton that keeps the first
# meta address it resolved.
#
# How the client follows (QMQ Java client behaviour, not the server's): it asks the meta server for
# a new route only when a broker answers BROKER_REJECT / BROKER_READ_ONLY, or every 60 s
# (MetaInfoService.REFRESH_INTERVAL_SECONDS). A master killed with -9 answers nothing, so until then
# every send to it fails (connection refused; each message is retried 10 times at once, then
# reported to onFailed) and pulls and acks fail, even though the meta server names the promoted
# slave ~3.5 s after the kill. Here the killed member is back on its address within a few hundred
# ms of the promotion and, as a slave, refuses with BROKER_REJECT: the client refreshes at once and
# sends to the new master about 3.6 s after the kill. If the killed machine stayed down, the client
# would carry on only at its next 60 s refresh (still without a restart).
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
pids=()
cleanup() {
    [ -f "$work/member0.restarted" ] && pids+=("$(cat "$work/member0.restarted")")
    for p in "${pids[@]}"; do
        # (the restarted member is not this shell's child: nothing to wait for)
        kill "$p" 2>/dev/null && { wait "$p" 2>/dev/null || true; }
    done
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

# Which JVM runs what: failover needs its own JVM and cluster (see above).
want_failover=0
others=()
for c in "$@"; do
    if [ "$c" = failover ]; then want_failover=1; else others+=("$c"); fi
done
run_standalone=1
if [ $# -eq 0 ]; then
    want_failover=1
elif [ ${#others[@]} -eq 0 ]; then
    run_standalone=0
fi

echo "building qmq and the body_producer example (rust-body check)"
(cd "$root" && cargo build --release -q -p qmq && cargo build --release -q -p qmq-client --example body_producer)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
qmq=$target/release/qmq

# wait_line <log> <text> <pid> [seconds]: waits until <log> has a line containing <text>; fails
# if <pid> exits first or the time is up.
wait_line() {
    local deadline=$((SECONDS + ${4:-30}))
    until grep -qF -- "$2" "$1"; do
        if ! kill -0 "$3" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
            echo "no \"$2\" in $1:" >&2
            cat "$1" >&2
            exit 1
        fi
        sleep 0.1
    done
}

status=0
java_run() {
    local log=$1
    shift
    java -Dlogback.configurationFile="$root/compat/java/$log" -cp "$work/classes:$cp" "$@" || status=$?
}

if [ "$run_standalone" -eq 1 ]; then
    broker=$(free_port) http=$(free_port) tcp=$(free_port) delay=$(free_port)
    retry_delay=5
    extra=()
    if grep -q -- '--retry-delay-secs' <<<"$("$qmq" standalone --help)"; then
        retry_delay=2
        extra=(--retry-delay-secs "$retry_delay")
    fi
    "$qmq" standalone --data-dir "$work/data" --listen "127.0.0.1:$broker" \
        --meta-http-listen "127.0.0.1:$http" --meta-tcp-listen "127.0.0.1:$tcp" \
        --delay-listen "127.0.0.1:$delay" "${extra[@]}" > "$work/server.log" 2>&1 &
    pids+=($!)
    wait_line "$work/server.log" 'qmq standalone ready' $!

    echo "running the checks against qmq standalone (broker retry delay ${retry_delay} s)"
    before=$status
    java_run logback.xml -Dcompat.rustBodyProducer="$target/release/examples/body_producer" \
        Compat "http://127.0.0.1:$http/meta/address" "$retry_delay" "${others[@]}"
    if [ "$status" -ne "$before" ]; then
        echo "--- last lines of the server log" >&2
        tail -n 30 "$work/server.log" >&2
    fi
fi

if [ "$want_failover" -eq 1 ]; then
    # A meta server and a two-member group with synchronous replication and fsync: member 0
    # registered as master, member 1 as slave.
    token=compat-token group=compat
    meta_http=$(free_port) meta_tcp=$(free_port)
    "$qmq" meta --meta-http-listen "127.0.0.1:$meta_http" --meta-tcp-listen "127.0.0.1:$meta_tcp" \
        --admin-token "$token" --advertised-host 127.0.0.1 --data-dir "$work/meta" \
        > "$work/meta.log" 2>&1 &
    pids+=($!)
    wait_line "$work/meta.log" 'qmq meta ready' $!
    member_pid=() member_port=() member_sync=()
    start_member() {
        "$qmq" broker --replication sync --flush sync --group "$group" \
            --listen "127.0.0.1:${member_port[$1]}" --sync-listen "127.0.0.1:${member_sync[$1]}" \
            --hostname 127.0.0.1 --meta "127.0.0.1:$meta_tcp" --data-dir "$work/member$1" \
            >> "$work/member$1.log" 2>&1 &
    }
    for i in 0 1; do
        member_port[$i]=$(free_port) member_sync[$i]=$(free_port)
        "$qmq" tools --metaserver "127.0.0.1:$meta_http" --token "$token" add-broker \
            --broker-group "$group" --role "$i" --hostname 127.0.0.1 --ip 127.0.0.1 \
            --serve-port "${member_port[$i]}" --sync-port "${member_sync[$i]}" > /dev/null
        start_member "$i"
        pids+=($!)
        member_pid[$i]=$!
        if [ "$i" -eq 0 ]; then
            wait_line "$work/member0.log" 'qmq broker master epoch=1' "${member_pid[0]}"
        else
            wait_line "$work/member1.log" 'qmq broker slave epoch=1' "${member_pid[1]}"
        fi
    done
    # Once the Java side has killed the master (it writes $killed) and the slave has been
    # promoted, the killed member is started again and rejoins as the new master's slave: with
    # synchronous replication (and the default --on-replication-timeout fail) a master without a
    # slave acknowledges nothing, whatever the client.
    killed=$work/master-killed
    (
        deadline=$((SECONDS + 300))
        until [ -f "$killed" ]; do
            [ $SECONDS -lt $deadline ] || exit 0
            sleep 0.1
        done
        wait_line "$work/member1.log" 'qmq broker master epoch=2' "${member_pid[1]}"
        start_member 0
        echo $! > "$work/member0.restarted"
    ) &
    pids+=($!)

    echo "running the failover check against a replicated group (master pid ${member_pid[0]})"
    before=$status
    java_run logback-failover.xml -Dcompat.failover.masterPid="${member_pid[0]}" \
        -Dcompat.failover.slaveLog="$work/member1.log" -Dcompat.failover.killedFile="$killed" \
        Compat "http://127.0.0.1:$meta_http/meta/address" 5 failover
    if [ "$status" -ne "$before" ]; then
        for f in meta member0 member1; do
            echo "--- last lines of the $f log" >&2
            tail -n 40 "$work/$f.log" >&2
        done
    fi
fi
exit "$status"
