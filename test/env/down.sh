#!/usr/bin/env bash
# down.sh stops the integration test environment that up.sh started: the
# Kafka broker (by its pid file) and the PostgreSQL server (pg_ctl stop -m
# fast). Safe to run when nothing runs.
#
#   down.sh          stop both, keep the data (the next up.sh starts fast)
#   down.sh --clean  stop both and delete all state (data, logs, env.sh)
set -euo pipefail

ENV_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
STATE=$ENV_DIR/.state
KAFKA_STATE=$STATE/kafka
KAFKA_PID_FILE=$KAFKA_STATE/kafka.pid
KAFKA_PROPS=$KAFKA_STATE/server.properties

clean=false
for arg in "$@"; do
	case $arg in
	--clean) clean=true ;;
	-h | --help)
		sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		printf 'env-down: unknown argument %q (try --clean)\n' "$arg" >&2
		exit 2
		;;
	esac
done

say() { printf 'env-down: %s\n' "$*" >&2; }

# wait_gone waits up to $2 seconds for pid $1 to exit.
wait_gone() {
	local i
	for ((i = 0; i < $2 * 4; i++)); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.25
	done
	! kill -0 "$1" 2>/dev/null
}

# --- Kafka ------------------------------------------------------------------------

if [[ -f $KAFKA_PID_FILE ]]; then
	pid=$(<"$KAFKA_PID_FILE")
	cmdline=
	if [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]]; then
		cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
	fi
	if [[ $cmdline == *"kafka.Kafka $KAFKA_PROPS"* ]]; then
		say "stopping Kafka (pid $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		if ! wait_gone "$pid" 60; then
			say "Kafka did not stop within 60s: killing it"
			kill -KILL "$pid" 2>/dev/null || true
			wait_gone "$pid" 10 || true
		fi
	else
		say "Kafka is not running"
	fi
	rm -f "$KAFKA_PID_FILE"
else
	say "Kafka is not running"
fi

# --- PostgreSQL ---------------------------------------------------------------------

PG_BASE=$STATE/pg
[[ -f $STATE/pg.location ]] && PG_BASE=$(<"$STATE/pg.location")
PGDATA=$PG_BASE/data

if [[ -f $PGDATA/postmaster.pid ]]; then
	pg_ctl=$(printf '%s\n' /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -n 1)
	[[ -x $pg_ctl ]] || pg_ctl=
	if ((EUID == 0)); then
		as_pg() { (cd / && exec runuser -u postgres -- "$@"); }
	else
		as_pg() { (cd / && exec "$@"); }
	fi
	say "stopping PostgreSQL ($PGDATA)"
	if [[ -z $pg_ctl ]] || ! as_pg "$pg_ctl" -D "$PGDATA" stop -m fast -w -t 60 >/dev/null 2>&1; then
		# No pg_ctl, or it failed: signal the postmaster of the pid file.
		pid=$(head -n 1 "$PGDATA/postmaster.pid" 2>/dev/null || true)
		if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
			say "pg_ctl stop failed: sending SIGQUIT to postmaster $pid"
			kill -QUIT "$pid" 2>/dev/null || true
			wait_gone "$pid" 20 || kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
else
	say "PostgreSQL is not running"
fi

# --- state ------------------------------------------------------------------------------

if $clean; then
	say "deleting $STATE"
	if [[ $PG_BASE == /var/tmp/sluice-pg-* ]]; then
		rm -rf "$PG_BASE"
	fi
	rm -rf "$STATE"
fi
