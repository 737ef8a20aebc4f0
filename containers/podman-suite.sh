#!/usr/bin/env bash
# The whole EventPost suite in podman containers, from the repository's own Dockerfiles, on a
# machine that reaches no image registry (what tests/containers and CI run).
#
#   containers/podman-suite.sh build   base image (debootstrap, cached), wheelhouse, every image
#   containers/podman-suite.sh up      start every part, detached; wait until the gateway is ready
#   containers/podman-suite.sh down    stop (SIGTERM, grace period) and remove them and the volume
#   containers/podman-suite.sh sizes   the size of every image
#   containers/podman-suite.sh all     build, then up
#
# Third-party images (mongo, rabbitmq, consul, mailpit) cannot be pulled on such a machine, so
# the parts use the host's RabbitMQ (AMQP_URL, default amqp://guest:guest@127.0.0.1:5672/%2F),
# the embedded SQLite store in one named volume mounted at /data in every part (a service and
# its relay share its file), and an SMTP server on the host (SMTP_HOST/SMTP_PORT, default
# 127.0.0.1:1025; `python -m devtools.smtp_sink` is one). The containers run on the host's
# network: the services find each other at 127.0.0.1 (static discovery), or through the Consul
# agent CONSUL_HTTP_ADDR names when it is set (every part registers there, with SERVICE_ADDRESS
# and the other CONSUL_* settings passed on), and reach RabbitMQ and the SMTP server there too. Ports come from GATEWAY_PORT, USERS_PORT,
# EVENTS_PORT and NOTIFICATIONS_PORT (defaults 8000-8003), so several runs can share a host.
#
# Root only, as podman here needs it; settings in containers/podman/containers.conf.
# EVENTPOST_CT_PREFIX (default eventpost-ct) prefixes container and volume names.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$HERE/podman/containers.conf}"
PREFIX="${EVENTPOST_CT_PREFIX:-eventpost-ct}"
VOLUME="$PREFIX-data"
IMAGES=(users events notifications notifications-worker dispatcher email-sender relay gateway)
GATEWAY_PORT="${GATEWAY_PORT:-8000}"
USERS_PORT="${USERS_PORT:-8001}"
EVENTS_PORT="${EVENTS_PORT:-8002}"
NOTIFICATIONS_PORT="${NOTIFICATIONS_PORT:-8003}"

say() { echo "[podman-suite] $*" >&2; }

wheelhouse() {
    # Wheels of every pinned requirement, built with the host's pip (and its certificates and
    # index settings), so the image builds need no network and never see the host's CA. Built
    # again only when requirements.txt changed.
    local py="$ROOT/.venv/bin/python" stamp="$HERE/wheelhouse/.requirements.sha256" sum
    sum=$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$sum" ]] && ls "$HERE"/wheelhouse/*.whl >/dev/null 2>&1; then
        say "wheelhouse is up to date with requirements.txt"
        return
    fi
    [[ -x "$py" ]] || py=python3
    say "wheelhouse: $py -m pip wheel -r requirements.txt -w containers/wheelhouse"
    "$py" -m pip wheel -q --disable-pip-version-check -r "$ROOT/requirements.txt" \
        -w "$HERE/wheelhouse" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
    ls "$HERE"/wheelhouse/*.whl >/dev/null
    echo "$sum" >"$stamp"
}

build() {
    "$HERE/base-image.sh"
    wheelhouse
    local name start
    for name in "${IMAGES[@]}"; do
        start=$(date +%s)
        # --format docker keeps HEALTHCHECK (the OCI format has no field for it); --network none
        # shows the build needs nothing from outside.
        podman build -q --format docker --network none -f "$ROOT/docker/$name.Dockerfile" \
            -t "localhost/eventpost/$name:latest" "$ROOT" >/dev/null
        say "built eventpost/$name in $(( $(date +%s) - start )) s"
    done
}

sizes() {
    local name
    for name in "${IMAGES[@]}"; do
        podman image inspect --format "eventpost/$name {{.Size}}" "localhost/eventpost/$name:latest"
    done
}

consul_env() {  # the Consul settings, as --env flags, for those that are set
    local var
    for var in CONSUL_HTTP_ADDR CONSUL_HTTP_TOKEN SERVICE_ADDRESS CONSUL_CHECK_INTERVAL \
        CONSUL_CHECK_TIMEOUT CONSUL_DEREGISTER_AFTER CONSUL_RESYNC_INTERVAL CONSUL_WAIT; do
        if [[ -n "${!var:-}" ]]; then
            printf '%s\n' --env "$var=${!var}"
        fi
    done
}

run_part() {  # run_part NAME IMAGE [ARG...]: one part, detached, on the host's network
    local name="$1" image="$2" err
    local -a consul
    shift 2
    mapfile -t consul < <(consul_env)
    err=$(mktemp)
    podman run -d --name "$PREFIX-$name" --network host --stop-timeout 15 \
        --volume "$VOLUME:/data" "${consul[@]}" \
        --env AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2F}" \
        --env SMTP_HOST="${SMTP_HOST:-127.0.0.1}" --env SMTP_PORT="${SMTP_PORT:-1025}" \
        --env GATEWAY_HOST=0.0.0.0 --env GATEWAY_PORT="$GATEWAY_PORT" \
        --env USERS_PORT="$USERS_PORT" --env EVENTS_PORT="$EVENTS_PORT" \
        --env NOTIFICATIONS_PORT="$NOTIFICATIONS_PORT" \
        --env DISPATCH_INTERVAL="${DISPATCH_INTERVAL:-1}" \
        --env RETRY_DELAYS="${RETRY_DELAYS:-5,30,120,600}" \
        --env GATEWAY_RATE_LIMIT="${GATEWAY_RATE_LIMIT:-20}" \
        --env GATEWAY_RATE_BURST="${GATEWAY_RATE_BURST:-40}" \
        --env LOG_LEVEL="${LOG_LEVEL:-INFO}" \
        "localhost/eventpost/$image:latest" "$@" >/dev/null 2>"$err" || { cat "$err" >&2; rm -f "$err"; return 1; }
    # Without systemd podman cannot schedule the HEALTHCHECK timers and says so on every start:
    # the checks stay defined (`podman healthcheck run` runs them); other messages are shown.
    grep -v "unable to get systemd connection" "$err" >&2 || true
    rm -f "$err"
    say "started $PREFIX-$name"
}

ready() {  # ready URL SECONDS: wait until URL answers 200
    local url="$1" deadline=$(( $(date +%s) + $2 ))
    until python3 -c "import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=2)" \
        "$url" 2>/dev/null; do
        if (( $(date +%s) > deadline )); then
            say "$url did not answer 200 in $2 s"
            return 1
        fi
        sleep 1
    done
}

up() {
    podman volume exists "$VOLUME" || podman volume create "$VOLUME" >/dev/null
    # The same parts, in the same order, as `invoke run` (devtools/launcher.py).
    run_part users users
    run_part events events
    run_part notifications notifications
    run_part users-relay relay --service users
    run_part events-relay relay --service events
    run_part notifications-worker notifications-worker
    run_part dispatcher dispatcher
    run_part email-sender email-sender
    run_part gateway gateway
    ready "http://127.0.0.1:$GATEWAY_PORT/ready" 120
    say "gateway ready on http://127.0.0.1:$GATEWAY_PORT"
}

down() {
    local ids
    ids=$(podman ps -a -q --filter "name=^$PREFIX-" || true)
    if [[ -n "$ids" ]]; then
        # shellcheck disable=SC2086 # one argument per container id
        podman stop -t 15 $ids 2>&1 >/dev/null | grep -v "unable to get systemd connection" >&2 || true
        # shellcheck disable=SC2086
        podman rm -f $ids 2>&1 >/dev/null | grep -v "unable to get systemd connection" >&2 || true
    fi
    podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
    say "removed $PREFIX-* and $VOLUME"
}

case "${1:-}" in
    build) build ;;
    up) up ;;
    down) down ;;
    sizes) sizes ;;
    all) build; up ;;
    *) echo "usage: $0 build|up|down|sizes|all" >&2; exit 2 ;;
esac
