#!/usr/bin/env bash
# Makes the services some tests need answer on loopback, as far as this machine allows:
#   postgres  PostgreSQL  127.0.0.1:5432  user postgres, trust auth on loopback, database test
#   mariadb   MariaDB     127.0.0.1:3306  user root@127.0.0.1 without password, database test
#   redis     Redis       127.0.0.1:6379  no persistence
# These are the defaults of crates/testkit (QMQ_TEST_POSTGRES_URL, QMQ_TEST_MYSQL_URL,
# QMQ_TEST_REDIS_URL); keep both in step.
#
# For each service: if its port answers, it is used as it is. Otherwise, if the server is
# installed, it is started; otherwise, when running as root with apt-get, it is installed
# (postgresql, mariadb-server, redis-server), set up as above and started. When none of that
# works, one line says so and the tests that need it skip themselves (or fail where
# QMQ_TEST_REQUIRE_SERVICES=1). A service whose URL variable points elsewhere is only checked,
# never started: whoever set the variable runs it.
#
# Usage: scripts/services.sh [postgres] [mariadb] [redis]   (default: all three)
# Exit status: 0 when every listed service answers, 1 otherwise.
set -u

want=("$@")
[ ${#want[@]} -eq 0 ] && want=(postgres mariadb redis)

log() { echo "services.sh: $*" >&2; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# Does host:port accept a TCP connection (bash's /dev/tcp, bounded by timeout when present)?
answers() {
  if command -v timeout >/dev/null 2>&1; then
    timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
  else
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
  fi
}

# Waits up to 60 s for host:port to answer.
wait_up() {
  local _
  for _ in $(seq 1 60); do
    answers "$1" "$2" && return 0
    sleep 1
  done
  return 1
}

# host and port of a URL like scheme://[user[:pw]@]host[:port][/...]; prints "host port".
endpoint() {
  local rest=${1#*://} default_port=$2 host port
  rest=${rest%%[/?#]*}
  rest=${rest##*@}
  if [[ $rest == \[* ]]; then
    host=${rest%%]*}; host=${host#[}
    port=${rest##*]}; port=${port#:}
  else
    host=${rest%%:*}
    port=${rest#"$host"}; port=${port#:}
  fi
  echo "${host:-127.0.0.1} ${port:-$default_port}"
}

env_var() { case "$1" in postgres) echo QMQ_TEST_POSTGRES_URL ;; mariadb) echo QMQ_TEST_MYSQL_URL ;; redis) echo QMQ_TEST_REDIS_URL ;; esac; }
default_port() { case "$1" in postgres) echo 5432 ;; mariadb) echo 3306 ;; redis) echo 6379 ;; esac; }
package() { case "$1" in postgres) echo postgresql ;; mariadb) echo mariadb-server ;; redis) echo redis-server ;; esac; }

# --- PostgreSQL -----------------------------------------------------------------------------

pg_installed() { command -v pg_ctlcluster >/dev/null 2>&1 && [ -n "$(pg_version)" ]; }
pg_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n1; }

pg_start() {
  local v; v=$(pg_version)
  [ -n "$v" ] || return 1
  pg_ctlcluster --skip-systemctl-redirect "$v" main start
}

# Trust for loopback TCP (tests connect as postgres without a password) and a database "test".
pg_setup() {
  local v hba; v=$(pg_version); hba=/etc/postgresql/$v/main/pg_hba.conf
  if [ -f "$hba" ] && ! grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
    log "PostgreSQL: trusting loopback connections in $hba"
    { printf 'host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n'; cat "$hba"; } >"$hba.qmq" &&
      cat "$hba.qmq" >"$hba" && rm -f "$hba.qmq"
    pg_ctlcluster --skip-systemctl-redirect "$v" main reload
  fi
  pg_create_test_db
}

pg_create_test_db() {
  is_root || return 0
  if ! runuser -u postgres -- psql -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
    log "PostgreSQL: creating database test"
    runuser -u postgres -- psql -qc 'CREATE DATABASE test'
  fi
}

# --- MariaDB --------------------------------------------------------------------------------

my_installed() { [ -x /usr/sbin/mariadbd ] || command -v mariadbd >/dev/null 2>&1; }

my_start() {
  local bin; bin=$(command -v mariadbd || echo /usr/sbin/mariadbd)
  # The packaged server runs as user mysql and only root can switch to it.
  is_root || return 1
  install -d -o mysql -g mysql /run/mysqld 2>/dev/null || mkdir -p /run/mysqld
  start-stop-daemon --start --oknodo --background --exec "$bin" -- --user=mysql
}

# root@127.0.0.1 without password (tests connect over TCP) and a database "test".
my_setup() {
  is_root || return 0
  log "MariaDB: allowing root@127.0.0.1 without password, creating database test"
  mariadb -uroot -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
    GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
    CREATE DATABASE IF NOT EXISTS test; FLUSH PRIVILEGES;"
}

my_create_test_db() {
  is_root || return 0
  mariadb -uroot -e 'CREATE DATABASE IF NOT EXISTS test' 2>/dev/null || true
}

# --- Redis ----------------------------------------------------------------------------------

redis_installed() { command -v redis-server >/dev/null 2>&1; }

redis_start() {
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "${TMPDIR:-/tmp}"
}

# --- one service ----------------------------------------------------------------------------

installed() { case "$1" in postgres) pg_installed ;; mariadb) my_installed ;; redis) redis_installed ;; esac; }
start() { case "$1" in postgres) pg_start ;; mariadb) my_start ;; redis) redis_start ;; esac; }
setup_fresh() { case "$1" in postgres) pg_setup ;; mariadb) my_setup ;; redis) : ;; esac; }
setup_started() { case "$1" in postgres) pg_create_test_db ;; mariadb) my_create_test_db ;; redis) : ;; esac; }

apt_install() {
  is_root && command -v apt-get >/dev/null 2>&1 || return 1
  log "installing $1 with apt-get"
  if [ -z "${QMQ_APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || return 1
    QMQ_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}

# Makes service $1 answer; returns 1 (after one line saying why) when it cannot.
ensure() {
  local s=$1 var url host port
  var=$(env_var "$s")
  url=${!var:-}
  read -r host port < <(endpoint "${url:-x://127.0.0.1}" "$(default_port "$s")")
  if answers "$host" "$port"; then
    echo "$s: up on $host:$port"
    return 0
  fi
  if [ -n "$url" ]; then
    log "$s: nothing answers at $host:$port (from $var); not starting anything for a custom URL"
    return 1
  fi
  if installed "$s"; then
    log "$s: starting the installed server"
    if start "$s" >/dev/null 2>&1 && wait_up "$host" "$port"; then
      setup_started "$s" >/dev/null 2>&1
      echo "$s: started on $host:$port"
      return 0
    fi
    log "$s: installed but did not start; its tests will be skipped"
    return 1
  fi
  if apt_install "$(package "$s")"; then
    if start "$s" >/dev/null 2>&1 && wait_up "$host" "$port"; then
      setup_fresh "$s" >/dev/null
      echo "$s: installed and started on $host:$port"
      return 0
    fi
    log "$s: installed but did not start; its tests will be skipped"
    return 1
  fi
  log "$s: not running, not installed, and cannot install it here (needs root and apt-get); its tests will be skipped"
  return 1
}

rc=0
for s in "${want[@]}"; do
  case "$s" in
    postgres | mariadb | redis) ensure "$s" || rc=1 ;;
    *) log "unknown service $s (known: postgres mariadb redis)"; rc=2 ;;
  esac
done
exit $rc
