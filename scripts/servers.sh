#!/usr/bin/env bash
# Real servers for cellar's server-backend tests, on 127.0.0.1 only, in a temporary directory:
#   * one Redis (appendonly yes, appendfsync everysec),
#   * a Redis Cluster of 3 masters with 1 replica each (cluster-node-timeout 2000 ms),
#   * one PostgreSQL (initdb as the unprivileged `postgres` user when run as root; password
#     authentication, the password handed over in PGPASSWORD, never in a URL), which also
#     accepts TLS (ssl = on),
#   * one Redis that speaks only TLS and requires a password (the TLS and auth tests),
#   * a second Redis Cluster of 3 masters (no replicas) that speaks only TLS, on its client
#     and cluster-bus ports, and requires the same password (the rediss+cluster:// tests),
# with a throwaway CA and server certificate (127.0.0.1, localhost) made by openssl in DIR/tls,
# plus a second, untrusted CA (DIR/tls/other-ca.pem) for the negative tests.
# Installs Debian's redis-server and postgresql with apt-get when they are missing.
#
#   scripts/servers.sh start DIR          start everything under DIR (created), write DIR/env
#   scripts/servers.sh env DIR            print the `export` lines (CELLAR_TEST_REDIS_URL,
#                                         CELLAR_TEST_REDIS_CLUSTER_URL, CELLAR_TEST_POSTGRES_URL,
#                                         CELLAR_TEST_REDIS_CLUSTER_PORTS, CELLAR_TEST_SERVERS_DIR,
#                                         CELLAR_TEST_REDIS_TLS_URL, CELLAR_TEST_REDIS_TLS_PASSWORD,
#                                         CELLAR_TEST_TLS_CA, CELLAR_TEST_TLS_OTHER_CA,
#                                         CELLAR_TEST_REDIS_CLUSTER_TLS_URL, PGPASSWORD)
#   scripts/servers.sh stop DIR           stop everything and remove DIR
#   scripts/servers.sh restart-pg DIR [MODE]  stop PostgreSQL (MODE fast, the default: open
#                                         transactions roll back; immediate: a crash, recovery
#                                         from the WAL at start) and start it again (fault tests)
#   scripts/servers.sh restart-redis DIR  kill -9 the standalone Redis and start it again on
#                                         the same port and data (it reloads its AOF)
#   scripts/servers.sh start-redis-node DIR PORT   restart a cluster node that a test killed
#
# Needs no stdin; used by scripts/test.sh, which stops the servers on exit (trap).
set -euo pipefail
cmd=${1:-}
DIR=${2:-}
[ -n "$cmd" ] && [ -n "$DIR" ] || { sed -n '2,20p' "$0"; exit 2; }

as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

pg_bin() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -n "$d" ] && [ -x "$d/initdb" ] && { echo "$d"; return; }
    command -v initdb >/dev/null && { dirname "$(command -v initdb)"; return; }
    return 1
}

install_missing() {
    local pkgs=()
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null || pkgs+=(redis-server)
    pg_bin >/dev/null || pkgs+=(postgresql)
    [ ${#pkgs[@]} -eq 0 ] && return
    echo "servers: installing ${pkgs[*]} (apt-get)"
    local sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo -n)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq "${pkgs[@]}" >/dev/null
}

# N free TCP ports on 127.0.0.1 whose +10000 (Redis Cluster bus) ports are free too.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
n, out, held = int(sys.argv[1]), [], []
while len(out) < n:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    if p + 10000 > 65535:
        s.close(); continue
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", p + 10000))
    except OSError:
        s.close(); b.close(); continue
    held += [s, b]; out.append(p)
print(" ".join(map(str, out)))
EOF
}

redis_node() { # DIR NAME PORT [extra args]
    local d=$1/$2 port=$3
    shift 3
    mkdir -p "$d"
    redis-server --bind 127.0.0.1 --port "$port" --dir "$d" --daemonize yes \
        --pidfile "$d/redis.pid" --logfile "$d/redis.log" --save "" \
        --appendonly yes --appendfsync everysec "$@"
}

wait_redis() { # PORT
    for _ in $(seq 100); do
        redis-cli -p "$1" ping 2>/dev/null | grep -q PONG && return 0
        sleep 0.1
    done
    echo "servers: redis on port $1 did not start" >&2
    return 1
}

cluster_node() { # DIR PORT
    redis_node "$1" "cluster-$2" "$2" --cluster-enabled yes \
        --cluster-config-file "$1/cluster-$2/nodes.conf" --cluster-node-timeout 2000
}

# A throwaway CA, a server certificate it signed (127.0.0.1 and localhost), and an unrelated CA.
make_certs() { # DIR
    local t=$1/tls
    mkdir -p "$t"
    (
        cd "$t"
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=cellar test CA" \
            -keyout ca.key -out ca.pem 2>/dev/null
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=cellar other CA" \
            -keyout other-ca.key -out other-ca.pem 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
            -keyout server.key -out server.csr 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
            -extfile server.ext -out server.pem 2>/dev/null
        rm -f ca.key other-ca.key server.csr ca.srl
        chmod 644 ./*.pem
        chmod 600 server.key
    )
}

start() {
    install_missing
    mkdir -p "$DIR"
    chmod 755 "$DIR"
    local ports
    read -r -a ports <<<"$(free_ports 12)"
    local rport=${ports[0]} pgport=${ports[7]} tlsport=${ports[8]}
    local cports=("${ports[@]:1:6}") tcports=("${ports[@]:9:3}")

    make_certs "$DIR"
    local tlspw
    tlspw=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    redis_node "$DIR" redis "$rport"
    redis_node "$DIR" redis-tls 0 --tls-port "$tlsport" --tls-cert-file "$DIR/tls/server.pem" \
        --tls-key-file "$DIR/tls/server.key" --tls-ca-cert-file "$DIR/tls/ca.pem" \
        --tls-auth-clients no --requirepass "$tlspw"
    for p in "${cports[@]}"; do cluster_node "$DIR" "$p"; done
    for p in "${tcports[@]}"; do
        # TLS on the client port (the plain port is off) and on the cluster bus.
        redis_node "$DIR" "tls-cluster-$p" 0 --tls-port "$p" --tls-cluster yes \
            --tls-replication yes --tls-cert-file "$DIR/tls/server.pem" \
            --tls-key-file "$DIR/tls/server.key" --tls-ca-cert-file "$DIR/tls/ca.pem" \
            --tls-auth-clients no --requirepass "$tlspw" --masterauth "$tlspw" \
            --cluster-enabled yes --cluster-config-file "$DIR/tls-cluster-$p/nodes.conf" \
            --cluster-node-timeout 2000
    done
    wait_redis "$rport"
    for p in "$tlsport" "${tcports[@]}"; do
        local up=0
        for _ in $(seq 100); do
            REDISCLI_AUTH=$tlspw redis-cli --tls --cacert "$DIR/tls/ca.pem" -p "$p" ping 2>/dev/null \
                | grep -q PONG && { up=1; break; }
            sleep 0.1
        done
        [ $up = 1 ] || { echo "servers: the TLS redis on port $p did not start" >&2; return 1; }
    done
    for p in "${cports[@]}"; do wait_redis "$p"; done
    local nodes=()
    for p in "${cports[@]}"; do nodes+=("127.0.0.1:$p"); done
    timeout 120 redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$DIR/cluster-create.log" 2>&1 \
        || { cat "$DIR/cluster-create.log" >&2; return 1; }
    local ok=0
    for _ in $(seq 200); do
        ok=1
        for p in "${cports[@]}"; do
            redis-cli -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || ok=0
        done
        [ $ok = 1 ] && break
        sleep 0.1
    done
    [ $ok = 1 ] || { echo "servers: the Redis Cluster did not reach state ok" >&2; return 1; }
    local tnodes=()
    for p in "${tcports[@]}"; do tnodes+=("127.0.0.1:$p"); done
    REDISCLI_AUTH=$tlspw timeout 120 redis-cli --tls --cacert "$DIR/tls/ca.pem" --cluster create "${tnodes[@]}" \
        --cluster-replicas 0 --cluster-yes >"$DIR/tls-cluster-create.log" 2>&1 \
        || { cat "$DIR/tls-cluster-create.log" >&2; return 1; }
    for _ in $(seq 200); do
        ok=1
        for p in "${tcports[@]}"; do
            REDISCLI_AUTH=$tlspw redis-cli --tls --cacert "$DIR/tls/ca.pem" -p "$p" cluster info \
                2>/dev/null | grep -q 'cluster_state:ok' || ok=0
        done
        [ $ok = 1 ] && break
        sleep 0.1
    done
    [ $ok = 1 ] || { echo "servers: the TLS Redis Cluster did not reach state ok" >&2; return 1; }

    local bin pw
    bin=$(pg_bin)
    pw=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    mkdir -p "$DIR/pg" "$DIR/pg-sock"
    printf '%s\n' "$pw" >"$DIR/pg-pw"
    cp "$DIR/tls/server.pem" "$DIR/tls/server.key" "$DIR/pg/"
    if [ "$(id -u)" = 0 ]; then chown -R postgres: "$DIR/pg" "$DIR/pg-sock" "$DIR/pg-pw"; fi
    chmod 700 "$DIR/pg"
    as_postgres "$bin/initdb" -D "$DIR/pg/data" -U postgres -A scram-sha-256 \
        --pwfile="$DIR/pg-pw" --no-sync >"$DIR/pg/initdb.log" 2>&1 \
        || { cat "$DIR/pg/initdb.log" >&2; return 1; }
    rm -f "$DIR/pg-pw"
    cat >>"$DIR/pg/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $pgport
unix_socket_directories = '$DIR/pg-sock'
fsync = on
synchronous_commit = on
max_connections = 100
ssl = on
ssl_cert_file = '$DIR/pg/server.pem'
ssl_key_file = '$DIR/pg/server.key'
EOF
    as_postgres "$bin/pg_ctl" -D "$DIR/pg/data" -l "$DIR/pg/log" -w -t 60 start >/dev/null
    {
        echo "export CELLAR_TEST_SERVERS_DIR='$DIR'"
        echo "export CELLAR_TEST_REDIS_URL='redis://127.0.0.1:$rport/0'"
        echo "export CELLAR_TEST_REDIS_CLUSTER_URL='redis+cluster://127.0.0.1:${cports[0]},127.0.0.1:${cports[1]}/'"
        echo "export CELLAR_TEST_REDIS_CLUSTER_PORTS='${cports[*]}'"
        echo "export CELLAR_TEST_POSTGRES_URL='postgresql://postgres@127.0.0.1:$pgport/postgres'"
        echo "export CELLAR_TEST_REDIS_TLS_URL='rediss://127.0.0.1:$tlsport/0?cacert=$DIR/tls/ca.pem'"
        echo "export CELLAR_TEST_REDIS_TLS_PASSWORD='$tlspw'"
        echo "export CELLAR_TEST_TLS_CA='$DIR/tls/ca.pem'"
        echo "export CELLAR_TEST_TLS_OTHER_CA='$DIR/tls/other-ca.pem'"
        echo "export CELLAR_TEST_REDIS_CLUSTER_TLS_URL='rediss+cluster://127.0.0.1:${tcports[0]},127.0.0.1:${tcports[1]}/?cacert=$DIR/tls/ca.pem'"
        echo "export PGPASSWORD='$pw'"
    } >"$DIR/env"
    chmod 600 "$DIR/env"
    echo "$rport" >"$DIR/redis-port"
    echo "${cports[*]}" >"$DIR/cluster-ports"
    echo "servers: redis 127.0.0.1:$rport (TLS: $tlsport), cluster 127.0.0.1:{${cports[*]// /,}} (TLS: {${tcports[*]// /,}}), postgresql 127.0.0.1:$pgport ($bin)"
}

stop() {
    [ -d "$DIR" ] || return 0
    for pidfile in "$DIR"/redis/redis.pid "$DIR"/redis-tls/redis.pid "$DIR"/cluster-*/redis.pid \
        "$DIR"/tls-cluster-*/redis.pid; do
        [ -f "$pidfile" ] || continue
        kill -9 "$(cat "$pidfile")" 2>/dev/null || true
    done
    if [ -f "$DIR/pg/data/postmaster.pid" ]; then
        local bin
        bin=$(pg_bin)
        as_postgres "$bin/pg_ctl" -D "$DIR/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$DIR"
}

case "$cmd" in
    start) start ;;
    env) cat "$DIR/env" ;;
    stop) stop ;;
    restart-pg)
        bin=$(pg_bin)
        as_postgres "$bin/pg_ctl" -D "$DIR/pg/data" -m "${3:-fast}" -w stop >/dev/null
        as_postgres "$bin/pg_ctl" -D "$DIR/pg/data" -l "$DIR/pg/log" -w -t 60 start >/dev/null
        ;;
    restart-redis)
        pid=$(cat "$DIR/redis/redis.pid")
        kill -9 "$pid"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
        rm -f "$DIR/redis/redis.pid"
        port=$(cat "$DIR/redis-port")
        redis_node "$DIR" redis "$port"
        wait_redis "$port"
        ;;
    start-redis-node)
        port=${3:?port}
        cluster_node "$DIR" "$port"
        wait_redis "$port"
        ;;
    *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
