#!/bin/bash
# gantry-healthcheck [PATH] [PORT]: exit 0 when the Gantry service in this container answers
# PATH (default /readyz) with 200. Installed in every Gantry image so that `docker compose` and
# the image's HEALTHCHECK need neither curl nor wget: bash's /dev/tcp is enough.
#
# PORT defaults to the service's own health port: the port of GANTRY_HTTP_ADDR for gantry-api
# (it serves /healthz and /readyz beside the REST API), of GANTRY_HEALTH_ADDR for the others.
set -u
path="${1:-/readyz}"
port="${2:-}"
if [ -z "$port" ]; then
    if [ -e /usr/local/bin/gantry-api ]; then
        addr="${GANTRY_HTTP_ADDR:-127.0.0.1:8080}"
    else
        addr="${GANTRY_HEALTH_ADDR:-127.0.0.1:8081}"
    fi
    port="${addr##*:}"
fi
case "$port" in
    '' | *[!0-9]*) echo "gantry-healthcheck: no usable port in '$port'" >&2; exit 2 ;;
esac

# Gantry images bind 0.0.0.0 (or [::]), so loopback reaches the service from inside.
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nUser-Agent: gantry-healthcheck\r\nConnection: close\r\n\r\n' "$path" >&3
status=""
IFS= read -r -t 5 status <&3 || true
exec 3<&-
case "$status" in
    "HTTP/1."[01]" 200"*) exit 0 ;;
    *) echo "gantry-healthcheck: ${path} on port ${port}: ${status:-no answer}" >&2; exit 1 ;;
esac
