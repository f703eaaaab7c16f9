#!/usr/bin/env bash
# A runner autoscaler for docker compose, keyed on the leader's `paradecom_desired_runners` gauge:
# every INTERVAL seconds it reads the gauge and scales the `runner` service to it, within
# [MIN_RUNNERS, MAX_RUNNERS]. Compose has no autoscaler of its own; on Kubernetes use
# keda-scaledobject.yaml or hpa.yaml beside this file instead.
#
#   METRICS_URL=http://127.0.0.1:9100/metrics TOKEN_FILE=docker/secrets/paradecom_token docker/autoscale/compose-autoscale.sh
#
# Settings (environment): METRICS_URL (the leader's --metrics-listen address + /metrics; required),
# TOKEN_FILE (the leader's token file, e.g. docker/secrets/paradecom_token: a leader with a token
# answers /metrics only with it),
# MIN_RUNNERS (default 1), MAX_RUNNERS (default 10), INTERVAL (seconds, default 15),
# COMPOSE (default "docker compose -f docker/compose.yaml"), ONCE=1 (one round, then exit),
# DRY_RUN=1 (print the compose command instead of running it).
set -euo pipefail
: "${METRICS_URL:?set METRICS_URL to the metrics URL of the leader, e.g. http://127.0.0.1:9100/metrics}"
MIN_RUNNERS=${MIN_RUNNERS:-1}
MAX_RUNNERS=${MAX_RUNNERS:-10}
INTERVAL=${INTERVAL:-15}
COMPOSE=${COMPOSE:-docker compose -f docker/compose.yaml}
for name in MIN_RUNNERS MAX_RUNNERS INTERVAL; do
  [[ ${!name} =~ ^[0-9]+$ ]] || { echo "compose-autoscale: $name must be a whole number, not '${!name}'" >&2; exit 2; }
done
(( MIN_RUNNERS <= MAX_RUNNERS )) || { echo "compose-autoscale: MIN_RUNNERS is more than MAX_RUNNERS" >&2; exit 2; }

desired_runners() {
  # The token goes to curl on stdin (--config -), not on its command line where `ps` would show it.
  local header=""
  [[ -n ${TOKEN_FILE:-} ]] && header="header = \"Authorization: Bearer $(tr -d '\r\n' < "$TOKEN_FILE")\""
  # The gauge's sample line: `paradecom_desired_runners 3.0`.
  printf '%s\n' "$header" | curl --config - -fsS --max-time 5 "$METRICS_URL" | awk '$1 == "paradecom_desired_runners" { printf "%d", $2; found = 1 } END { exit !found }'
}

while true; do
  if wanted=$(desired_runners); then
    (( wanted < MIN_RUNNERS )) && wanted=$MIN_RUNNERS
    (( wanted > MAX_RUNNERS )) && wanted=$MAX_RUNNERS
    command="$COMPOSE up -d --no-recreate --scale runner=$wanted runner"
    if [[ ${DRY_RUN:-} == 1 ]]; then echo "$command"; else $command; fi
  else
    echo "compose-autoscale: cannot read paradecom_desired_runners from $METRICS_URL; keeping the runners as they are" >&2
  fi
  [[ ${ONCE:-} == 1 ]] && exit 0
  sleep "$INTERVAL"
done
