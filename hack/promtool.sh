#!/usr/bin/env bash
# Checks the alert rules of config/prometheus with promtool: `promtool check rules` on the
# PrometheusRule's groups and `promtool test rules` on config/prometheus/tests/*.yaml.
# promtool comes from PATH, or from Debian's prometheus package, installed here when missing
# (as root, through apt-get). The package would start a Prometheus server from its maintainer
# scripts; a policy-rc.d that refuses every start keeps it from doing so while we install.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'promtool.sh: %s\n' "$*" >&2; }

install_promtool() {
	if [ "$(id -u)" != 0 ]; then
		log "promtool is missing and installing it needs root: apt-get install prometheus (or put promtool on PATH)"
		exit 1
	fi
	local start=$SECONDS policy=/usr/sbin/policy-rc.d own_policy=
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\n# written by hack/promtool.sh while it installs prometheus: no service starts\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		own_policy=1
	fi
	# Remove our policy-rc.d on every exit path, and only ours.
	if [ -n "$own_policy" ]; then trap 'rm -f /usr/sbin/policy-rc.d' EXIT; fi
	log "promtool not found: installing Debian's prometheus package (apt-get, once)"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends prometheus >/dev/null
	if [ -n "$own_policy" ]; then rm -f "$policy"; trap - EXIT; fi
	log "installed in $((SECONDS - start))s"
}

PROMTOOL=${PROMTOOL:-$(command -v promtool || true)}
if [ -z "$PROMTOOL" ]; then
	install_promtool
	PROMTOOL=$(command -v promtool)
fi

# promtool reads plain rule files, not PrometheusRule objects: extract the spec's groups.
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
go run ./hack/monitoring/extract-rules config/prometheus/alerts.yaml >"$out/alerts.rules.yaml"
"$PROMTOOL" check rules "$out/alerts.rules.yaml"
# The tests name their rule file relative to themselves; run them from a copy next to it.
cp config/prometheus/tests/*.yaml "$out/"
(cd "$out" && "$PROMTOOL" test rules ./*_test.yaml)
