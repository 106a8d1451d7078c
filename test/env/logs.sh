#!/usr/bin/env bash
# logs.sh prints the end of the test environment's logs (Kafka, PostgreSQL),
# for reading after a failed test run.
#
#   logs.sh [LINES]   last LINES lines of each log (default 100)
set -euo pipefail

ENV_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
LOGS=$ENV_DIR/.state/logs
lines=${1:-100}
[[ $lines =~ ^[0-9]+$ ]] || { printf 'usage: %s [LINES]\n' "$0" >&2; exit 2; }

for name in kafka postgres; do
	log=$LOGS/$name.log
	printf '===== %s: last %s lines of %s =====\n' "$name" "$lines" "$log"
	if [[ -f $log ]]; then
		tail -n "$lines" "$log"
	else
		printf '(no log: the environment was not started with test/env/up.sh)\n'
	fi
done
