#!/usr/bin/env bash
# Installs the Debian packages that `make test` and .ci/run need: the build
# tools for `go test -race` (cgo) and the real servers the tests start
# themselves on loopback ports (see internal/testsvc).
#
# As root on Debian: installs whatever is missing (one `apt-get update`, then a
# quiet, non-interactive install). Package services are never started: apt's
# service starts are blocked with a temporary policy-rc.d when the machine has
# none. As another user, or off Debian: prints what is missing and carries on,
# and the tests that need a missing server skip (or fail when CI=true or
# INBOXD_REQUIRE_SERVICES=1).
#
# Usage: scripts/test-deps.sh [EXTRA-PACKAGE...]
set -euo pipefail

packages=(
	make gcc libc6-dev ca-certificates # go test -race needs cgo; module downloads need CA roots
	redis-server                       # Redis
	postgresql                         # PostgreSQL (pg_ctlcluster, initdb)
	dovecot-imapd                      # Dovecot, the integration IMAP server
	prometheus                         # promtool: rule checks and real scrapes
	systemd                            # systemd-analyze for systemd/unit_test.go
	"$@"
)

log() { printf 'test-deps: %s\n' "$*" >&2; }

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
	log "not a Debian system; make sure these (or their equivalents) are installed: ${packages[*]}"
	exit 0
fi

missing=()
for p in "${packages[@]}"; do
	if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" != installed ]]; then
		missing+=("$p")
	fi
done
if ((${#missing[@]} == 0)); then
	log "all ${#packages[@]} packages installed"
	exit 0
fi

if ((EUID != 0)); then
	log "missing (not root, not installing): ${missing[*]}"
	log "install with: sudo apt-get install --no-install-recommends ${missing[*]}"
	exit 0
fi

start=$SECONDS
aptlog=$(mktemp -t inboxd-test-deps.XXXXXX.log)
policy=/usr/sbin/policy-rc.d
own_policy=false
cleanup() {
	if $own_policy; then rm -f "$policy"; fi
}
trap cleanup EXIT
if [[ ! -e $policy ]]; then
	# Exit status 101: "action forbidden", so invoke-rc.d starts nothing.
	printf '#!/bin/sh\n# temporary, from inboxd scripts/test-deps.sh\nexit 101\n' >"$policy"
	chmod 0755 "$policy"
	own_policy=true
fi

export DEBIAN_FRONTEND=noninteractive
apt=(apt-get -qq -o Dpkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
log "installing ${missing[*]} (log: $aptlog)"
if ! "${apt[@]}" update >"$aptlog" 2>&1 ||
	! "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >>"$aptlog" 2>&1; then
	tail -n 40 "$aptlog" >&2
	log "apt-get failed; full log in $aptlog"
	exit 1
fi
rm -f "$aptlog"
log "installed ${#missing[@]} packages in $((SECONDS - start))s"
