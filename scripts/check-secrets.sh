#!/usr/bin/env bash
# Fails when a fixed test secret (testdata/secrets.txt) appears in test
# output: `make test` tees `go test -v ./...` (every t.Log line, every failure
# message, every daemon log a test prints) to a file and runs this on it.
# Only output is scanned, never the tests' sources, where the secrets are
# written on purpose.
#
# Usage: scripts/check-secrets.sh [-s SECRETS-FILE] OUTPUT-FILE...
# Prints FILE:LINE and the secret for every hit; exits 1 on a hit, 2 on a
# usage error (no output file, an unreadable file, an empty secrets list).
set -euo pipefail

secrets_file="$(dirname "$0")/../testdata/secrets.txt"
if [[ ${1:-} == -s ]]; then
	secrets_file=${2:?-s needs a file}
	shift 2
fi
if (($# == 0)); then
	echo "usage: $0 [-s SECRETS-FILE] OUTPUT-FILE..." >&2
	exit 2
fi

secrets=()
while IFS= read -r line || [[ -n $line ]]; do
	[[ -z $line || $line == \#* ]] && continue
	secrets+=("$line")
done <"$secrets_file"
if ((${#secrets[@]} == 0)); then
	echo "check-secrets: no secrets in $secrets_file" >&2
	exit 2
fi

patterns=$(mktemp)
trap 'rm -f "$patterns"' EXIT
printf '%s\n' "${secrets[@]}" >"$patterns"

hits=0
for out in "$@"; do
	if [[ ! -r $out ]]; then
		echo "check-secrets: cannot read $out" >&2
		exit 2
	fi
	# grep finds the lines fast; the loop names the secret(s) on each.
	while IFS= read -r hit; do
		lineno=${hit%%:*}
		text=${hit#*:}
		for s in "${secrets[@]}"; do
			if [[ $text == *"$s"* ]]; then
				printf '%s:%s: test secret [%s] in the output: %.200s\n' "$out" "$lineno" "$s" "$text"
				hits=$((hits + 1))
			fi
		done
	done < <(grep -a -n -F -f "$patterns" -- "$out" || true)
done

if ((hits > 0)); then
	echo "check-secrets: $hits test secret(s) printed; a test must not log a password or key (see testdata/secrets.txt)" >&2
	exit 1
fi
echo "check-secrets: none of ${#secrets[@]} test secrets in $(cat -- "$@" | wc -l) lines of test output"
