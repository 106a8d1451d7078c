#!/usr/bin/env bash
# up.sh starts the integration test environment: a real Apache Kafka broker
# (KRaft, one combined broker+controller node) and a real PostgreSQL server,
# both on 127.0.0.1 only, and writes test/env/.state/env.sh for the tests.
#
# It installs what is missing (Java 17, Maven, PostgreSQL from Debian's
# packages), resolves the Kafka jars from Maven Central into test/kafka/lib,
# formats the KRaft storage once, and reuses whatever is already running. It
# is safe to run again at any time; test/env/down.sh stops both.
#
#   Kafka       PLAINTEXT 127.0.0.1:19092, CONTROLLER 127.0.0.1:19093
#   PostgreSQL  127.0.0.1:15432, superuser postgres, trust auth, db sluice_test
#   state       test/env/.state/ (logs/, kafka/, pg/ or see .state/pg.location)
#
# Ports can be moved with SLUICE_TEST_KAFKA_PORT, SLUICE_TEST_KAFKA_CONTROLLER_PORT
# and SLUICE_TEST_PG_PORT (the same values must be given to down.sh's shell).
set -euo pipefail

ENV_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd "$ENV_DIR/../.." && pwd -P)
STATE=$ENV_DIR/.state
LOGS=$STATE/logs
KAFKA_DIR=$REPO_ROOT/test/kafka
KAFKA_LIB=$KAFKA_DIR/lib
KAFKA_STATE=$STATE/kafka

KAFKA_PORT=${SLUICE_TEST_KAFKA_PORT:-19092}
CONTROLLER_PORT=${SLUICE_TEST_KAFKA_CONTROLLER_PORT:-19093}
PG_PORT=${SLUICE_TEST_PG_PORT:-15432}
PG_DB=sluice_test
KAFKA_WAIT_SECONDS=90
PG_WAIT_SECONDS=60

KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
PG_DSN="postgres://postgres@127.0.0.1:$PG_PORT/$PG_DB?sslmode=disable"

say() { printf 'env-up: %s\n' "$*" >&2; }
die() { printf 'env-up: error: %s\n' "$*" >&2; exit 1; }

# port_open reports whether something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# close_extra_fds closes every descriptor above 2 in the calling (sub)shell, so
# that a daemon started from it holds neither our lock nor a pipe of whoever
# ran us (make, CI): a daemon holding the CI's stdout would keep it waiting.
close_extra_fds() {
	local fd
	for fd in /proc/"$BASHPID"/fd/*; do
		fd=${fd##*/}
		if [[ $fd =~ ^[0-9]+$ ]] && ((fd > 2)); then
			eval "exec $fd>&-" 2>/dev/null || true
		fi
	done
}

start_time=$SECONDS
mkdir -p "$STATE" "$LOGS" "$KAFKA_STATE"

# One up.sh at a time per checkout. The lock's descriptor is closed in the
# daemons we start (close_extra_fds), so it is released when we exit.
exec 9>"$STATE/.lock"
if command -v flock >/dev/null 2>&1; then
	flock -w 300 9 || die "another up.sh holds $STATE/.lock"
fi

# --- tools -------------------------------------------------------------------

# java_major prints the major version of the java binary $1 (8, 11, 17, ...).
java_major() {
	# awk reads to the end: an early exit would make java die of SIGPIPE.
	"$1" -XshowSettings:properties -version 2>&1 |
		awk -F'= ' '!found && /java\.specification\.version/ { v = $2; sub(/^1\./, "", v); print v; found = 1 }'
}

# find_java prints a java binary of version 17 or newer, or nothing.
find_java() {
	local c v
	for c in "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java || true)" /usr/lib/jvm/*/bin/java; do
		[[ -n $c && -x $c ]] || continue
		v=$(java_major "$c")
		if [[ $v =~ ^[0-9]+$ ]] && ((v >= 17)); then
			printf '%s\n' "$c"
			return 0
		fi
	done
	return 0
}

# find_pg_bin prints the bin folder of the newest PostgreSQL server installed.
find_pg_bin() {
	local d
	d=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
	if [[ -n $d && -x $d/postgres && -x $d/initdb && -x $d/pg_ctl && -x $d/psql ]]; then
		printf '%s\n' "$d"
	fi
}

missing=()
[[ -n $(find_java) ]] || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
[[ -n $(find_pg_bin) ]] || missing+=(postgresql)
if ((EUID == 0)) && ! id -u postgres >/dev/null 2>&1; then
	missing+=(postgresql)
fi
command -v go >/dev/null 2>&1 || die "go is not on PATH (needed to build test/env/kafkawait)"

if ((${#missing[@]} > 0)); then
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
	((EUID == 0)) || die "missing ${missing[*]}: install them (apt-get install ${missing[*]}) or run as root"
	say "installing ${missing[*]} with apt-get (once)"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >&2
	apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# promtool (from Debian's prometheus package) checks deploy/'s alert rules and
# the metrics sluice exports. Only the tool is wanted, not a Prometheus server:
# a policy-rc.d forbids the package's scripts to start its service while it
# installs, recommends (prometheus-node-exporter, another service) are left
# out, and on a systemd host the unit is disabled again.
POLICY_RC=/usr/sbin/policy-rc.d
restore_policy_rc() {
	rm -f "$POLICY_RC"
	if [[ -e $POLICY_RC.sluice-saved ]]; then
		mv -f "$POLICY_RC.sluice-saved" "$POLICY_RC"
	fi
}
if ! command -v promtool >/dev/null 2>&1; then
	((EUID == 0)) || die "promtool is missing: install it (apt-get install --no-install-recommends prometheus) or run as root"
	say "installing promtool (Debian's prometheus package; its service is not started)"
	export DEBIAN_FRONTEND=noninteractive
	if [[ -e $POLICY_RC ]]; then
		mv -f "$POLICY_RC" "$POLICY_RC.sluice-saved"
	fi
	printf '#!/bin/sh\n# test/env/up.sh: no service starts while promtool installs.\nexit 101\n' >"$POLICY_RC"
	chmod 755 "$POLICY_RC"
	trap restore_policy_rc EXIT
	apt-get update -q >&2
	apt-get install -y -q --no-install-recommends prometheus >&2
	restore_policy_rc
	trap - EXIT
	# The package enables its unit (and SysV script) for the next boot: undo
	# that too. systemctl disable also works where systemd does not run.
	if command -v systemctl >/dev/null 2>&1; then
		systemctl disable --now prometheus.service >/dev/null 2>&1 ||
			systemctl disable prometheus.service >/dev/null 2>&1 || true
	fi
	command -v promtool >/dev/null 2>&1 || die "the prometheus package installed no promtool"
fi

JAVA=$(find_java)
[[ -n $JAVA ]] || die "no java 17 or newer found after installing openjdk-17-jre-headless"
PG_BIN=$(find_pg_bin)
[[ -n $PG_BIN ]] || die "no PostgreSQL server under /usr/lib/postgresql/*/bin after installing postgresql"

# --- Kafka jars ---------------------------------------------------------------

pom_sum=$(sha256sum "$KAFKA_DIR/pom.xml" | cut -d' ' -f1)
if [[ ! -f $KAFKA_LIB/.resolved || $(<"$KAFKA_LIB/.resolved") != "$pom_sum" ]]; then
	say "resolving Kafka jars from Maven Central into test/kafka/lib"
	partial=$KAFKA_DIR/target/lib.partial
	rm -rf "$partial"
	mkdir -p "$KAFKA_DIR/target"
	mvn -B -Dstyle.color=never -f "$KAFKA_DIR/pom.xml" \
		dependency:copy-dependencies -DoutputDirectory="$partial" >"$LOGS/mvn.log" 2>&1 || {
		tail -n 40 "$LOGS/mvn.log" >&2
		die "mvn could not resolve the Kafka jars (log: $LOGS/mvn.log)"
	}
	printf '%s\n' "$pom_sum" >"$partial/.resolved"
	rm -rf "$KAFKA_LIB"
	mv "$partial" "$KAFKA_LIB"
fi
KAFKA_JAR=$(compgen -G "$KAFKA_LIB/kafka_2.13-*.jar" || true)
[[ -n $KAFKA_JAR ]] || die "no kafka_2.13 jar in $KAFKA_LIB"

# --- kafkawait ------------------------------------------------------------------

KAFKAWAIT=$STATE/bin/kafkawait
if [[ ! -x $KAFKAWAIT || $ENV_DIR/kafkawait/main.go -nt $KAFKAWAIT || $REPO_ROOT/go.sum -nt $KAFKAWAIT ]]; then
	say "building test/env/kafkawait"
	if ! (cd "$REPO_ROOT" && go build -o "$KAFKAWAIT" ./test/env/kafkawait); then
		# go.mod may be mid-edit in a working tree: an older build still works.
		[[ -x $KAFKAWAIT ]] || die "go build ./test/env/kafkawait failed"
		say "warning: go build ./test/env/kafkawait failed: using the previous build"
	fi
fi

# --- Kafka --------------------------------------------------------------------

KAFKA_PID_FILE=$KAFKA_STATE/kafka.pid
KAFKA_PROPS=$KAFKA_STATE/server.properties
KAFKA_FINGERPRINT=$KAFKA_STATE/running.fingerprint
JAVA_OPTS=(
	-Xms512m -Xmx768m
	-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
	-Djava.awt.headless=true
	-Djava.net.preferIPv4Stack=true
	-Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties"
	-Dkafka.logs.dir="$LOGS"
	-cp "$KAFKA_LIB/*"
)

# kafka_pid prints the pid of the broker this checkout started, if it runs.
kafka_pid() {
	local pid
	[[ -f $KAFKA_PID_FILE ]] || return 0
	pid=$(<"$KAFKA_PID_FILE")
	[[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 0
	local cmdline
	cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
	if [[ $cmdline == *"kafka.Kafka $KAFKA_PROPS"* ]]; then
		printf '%s\n' "$pid"
	fi
}

kafka_ready() { "$KAFKAWAIT" -q -brokers "$KAFKA_BROKERS" -timeout "${1:-3s}" 2>/dev/null; }

# kafka_props prints the broker's configuration.
kafka_props() {
	cat <<EOF
# Written by test/env/up.sh on every run; edit up.sh, not this file.
# Single node in KRaft combined mode, for tests only, on 127.0.0.1.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_STATE/data

num.partitions=6
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=6
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000

# Sized for a 2-core test machine.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.cleaner.dedupe.buffer.size=16777216
log.retention.hours=24
EOF
}

# A running broker is reused only if it runs what this up.sh would start.
kafka_fingerprint=$(
	kafka_props
	printf '%s\n' "$JAVA" "${JAVA_OPTS[@]}" "$pom_sum"
	sha256sum "$KAFKA_DIR/log4j2.properties"
)
pid=$(kafka_pid)
if [[ -n $pid && -f $KAFKA_FINGERPRINT && $(<"$KAFKA_FINGERPRINT") != "$kafka_fingerprint" ]]; then
	say "Kafka (pid $pid) runs with an older configuration: restarting it"
	reason=restart
elif [[ -n $pid ]] && kafka_ready 10s; then
	reason=reuse
elif [[ -n $pid ]]; then
	say "Kafka pid $pid does not answer on $KAFKA_BROKERS: restarting it"
	reason=restart
elif port_open "$KAFKA_PORT" && kafka_ready 10s; then
	# Another checkout's environment (or a leftover one) holds the port. It
	# serves the tests as well as ours would: use it rather than fail.
	reason=foreign
else
	reason=start
fi

if [[ $reason == reuse ]]; then
	say "Kafka already running (pid $pid) on $KAFKA_BROKERS: reusing it"
elif [[ $reason == foreign ]]; then
	say "WARNING: a Kafka that this checkout did not start answers on $KAFKA_BROKERS: using it (down.sh will not stop it)"
else
	if [[ -n $pid ]]; then
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 1 60); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.5
		done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$KAFKA_PID_FILE"
	for port in "$KAFKA_PORT" "$CONTROLLER_PORT"; do
		port_open "$port" && die "127.0.0.1:$port is in use by a process this checkout did not start (see: ss -ltnp 'sport = :$port')"
	done

	kafka_props >"$KAFKA_PROPS"
	printf '%s\n' "$kafka_fingerprint" >"$KAFKA_FINGERPRINT"
	mkdir -p "$KAFKA_STATE/data"
	if [[ ! -f $KAFKA_STATE/data/meta.properties ]]; then
		cluster_id=$("$JAVA" "${JAVA_OPTS[@]}" kafka.tools.StorageTool random-uuid 2>>"$LOGS/kafka.log" | tail -n 1)
		[[ $cluster_id =~ ^[A-Za-z0-9_-]{22}$ ]] || die "kafka.tools.StorageTool random-uuid printed no cluster id (see $LOGS/kafka.log)"
		say "formatting KRaft storage in $KAFKA_STATE/data (cluster id $cluster_id)"
		"$JAVA" "${JAVA_OPTS[@]}" kafka.tools.StorageTool format \
			--config "$KAFKA_PROPS" --cluster-id "$cluster_id" --ignore-formatted \
			>>"$LOGS/kafka.log" 2>&1 || {
			tail -n 30 "$LOGS/kafka.log" >&2
			die "formatting the KRaft storage failed"
		}
		printf '%s\n' "$cluster_id" >"$KAFKA_STATE/cluster.id"
	fi

	say "starting Kafka ($(basename "$KAFKA_JAR"), $("$JAVA" -version 2>&1 | sed -n 1p))"
	printf '\n===== %s up.sh starts Kafka =====\n' "$(date -Is)" >>"$LOGS/kafka.log"
	(
		close_extra_fds
		cd "$KAFKA_STATE"
		# Not a process group leader (no job control here), so setsid does
		# not fork: $! below is the JVM's pid. A new session keeps the broker
		# out of the caller's terminal signals (Ctrl-C in make).
		exec setsid "$JAVA" "${JAVA_OPTS[@]}" kafka.Kafka "$KAFKA_PROPS"
	) </dev/null >>"$LOGS/kafka.log" 2>&1 &
	pid=$!
	printf '%s\n' "$pid" >"$KAFKA_PID_FILE"

	deadline=$((SECONDS + KAFKA_WAIT_SECONDS))
	until kafka_ready 3s; do
		if ! kill -0 "$pid" 2>/dev/null; then
			tail -n 40 "$LOGS/kafka.log" >&2
			rm -f "$KAFKA_PID_FILE"
			die "Kafka exited during start-up (log: $LOGS/kafka.log)"
		fi
		if ((SECONDS >= deadline)); then
			tail -n 40 "$LOGS/kafka.log" >&2
			die "Kafka did not answer on $KAFKA_BROKERS within ${KAFKA_WAIT_SECONDS}s (pid $pid, log: $LOGS/kafka.log)"
		fi
		sleep 0.5
	done
	say "Kafka ready on $KAFKA_BROKERS (pid $pid)"
fi

# --- PostgreSQL -------------------------------------------------------------------

# The server must run as a non-root user: as root that is the postgres user,
# otherwise the current one. It must be able to reach its data folder.
if ((EUID == 0)); then
	PG_USER=postgres
	as_pg() { (cd / && exec runuser -u postgres -- "$@"); }
else
	PG_USER=$(id -un)
	as_pg() { (cd / && exec "$@"); }
fi

PG_LOCATION_FILE=$STATE/pg.location
if [[ -f $PG_LOCATION_FILE ]]; then
	PG_BASE=$(<"$PG_LOCATION_FILE")
else
	PG_BASE=$STATE/pg
	if ! as_pg test -x "$STATE" </dev/null >/dev/null 2>&1; then
		# The checkout is not traversable by $PG_USER (under /root, say).
		PG_BASE=/var/tmp/sluice-pg-$(printf '%s' "$REPO_ROOT" | sha256sum | cut -c1-12)
		say "$PG_USER cannot reach $STATE: PostgreSQL data goes to $PG_BASE"
	fi
	printf '%s\n' "$PG_BASE" >"$PG_LOCATION_FILE"
fi
PGDATA=$PG_BASE/data
PG_MAJOR=$(basename "$(dirname "$PG_BIN")")

pg_running() { [[ -f $PGDATA/PG_VERSION ]] && as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }
pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -t "${1:-3}" >/dev/null 2>&1; }
psql_pg() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }

# write_pg_file writes stdin to the file $1 in the data folder, owned by $PG_USER.
write_pg_file() {
	cat >"$1"
	chown "$PG_USER": "$1"
	chmod 600 "$1"
}

pg_conf() {
	cat <<EOF
# Written by test/env/up.sh on every start; edit up.sh, not this file.
# A disposable server for tests: no durability, loopback only.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = ''
max_connections = 200
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
log_timezone = 'UTC'
timezone = 'UTC'
EOF
}

pg_hba() {
	cat <<EOF
# Written by test/env/up.sh: test only, trust on loopback, nothing else.
# TYPE  DATABASE  USER  ADDRESS       METHOD
host    all       all   127.0.0.1/32  trust
EOF
}

# A running server is reused only if it runs what this up.sh would start.
PG_FINGERPRINT=$STATE/pg.fingerprint
pg_fingerprint=$(
	pg_conf
	pg_hba
	printf '%s\n' "$PG_BIN" "$PGDATA"
)
if pg_running && [[ -f $PG_FINGERPRINT && $(<"$PG_FINGERPRINT") != "$pg_fingerprint" ]]; then
	say "PostgreSQL ($PGDATA) runs with an older configuration: restarting it"
	reason=restart
elif pg_running && pg_ready 10; then
	reason=reuse
elif pg_running; then
	say "PostgreSQL runs in $PGDATA but does not answer on 127.0.0.1:$PG_PORT: restarting it"
	reason=restart
elif port_open "$PG_PORT" && pg_ready 10; then
	reason=foreign
else
	reason=start
fi

if [[ $reason == reuse ]]; then
	say "PostgreSQL already running ($PGDATA) on 127.0.0.1:$PG_PORT: reusing it"
elif [[ $reason == foreign ]]; then
	say "WARNING: a PostgreSQL that this checkout did not start answers on 127.0.0.1:$PG_PORT: using it (down.sh will not stop it)"
else
	if [[ $reason == restart ]]; then
		as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" stop -m fast -w -t 60 </dev/null >>"$LOGS/postgres.log" 2>&1 || true
	fi
	port_open "$PG_PORT" && die "127.0.0.1:$PG_PORT is in use by a process this checkout did not start (see: ss -ltnp 'sport = :$PG_PORT')"

	if [[ -f $PGDATA/PG_VERSION && $(<"$PGDATA/PG_VERSION") != "$PG_MAJOR" ]]; then
		say "$PGDATA is from PostgreSQL $(<"$PGDATA/PG_VERSION"), the server is $PG_MAJOR: recreating it"
		rm -rf "$PGDATA"
	fi
	if [[ ! -f $PGDATA/PG_VERSION ]]; then
		rm -rf "$PGDATA"
		mkdir -p "$PG_BASE"
		chown "$PG_USER": "$PG_BASE"
		chmod 700 "$PG_BASE"
		say "initdb PostgreSQL $PG_MAJOR cluster in $PGDATA"
		as_pg "$PG_BIN/initdb" -D "$PGDATA" -U postgres -A trust -E UTF8 --locale=C --no-sync \
			</dev/null >>"$LOGS/postgres.log" 2>&1 || {
			tail -n 30 "$LOGS/postgres.log" >&2
			die "initdb failed"
		}
	fi

	pg_conf | write_pg_file "$PGDATA/sluice.conf"
	pg_hba | write_pg_file "$PGDATA/pg_hba.conf"
	printf '%s\n' "$pg_fingerprint" >"$PG_FINGERPRINT"
	grep -qxF "include = 'sluice.conf'" "$PGDATA/postgresql.conf" ||
		printf "\ninclude = 'sluice.conf'\n" >>"$PGDATA/postgresql.conf"

	say "starting PostgreSQL $PG_MAJOR on 127.0.0.1:$PG_PORT"
	printf '\n===== %s up.sh starts PostgreSQL =====\n' "$(date -Is)" >>"$LOGS/postgres.log"
	# No -l: the server inherits this shell's descriptor of the log, which
	# root opened, so the log may sit where $PG_USER cannot write.
	(
		close_extra_fds
		exec </dev/null >>"$LOGS/postgres.log" 2>&1
		as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -w -t "$PG_WAIT_SECONDS" start
	) || {
		tail -n 30 "$LOGS/postgres.log" >&2
		die "PostgreSQL did not start (log: $LOGS/postgres.log)"
	}
	pg_ready 10 || die "PostgreSQL started but does not answer on 127.0.0.1:$PG_PORT"
fi

db_exists=$(psql_pg -d postgres -Atc "select 1 from pg_database where datname = '$PG_DB'") ||
	die "cannot query PostgreSQL on 127.0.0.1:$PG_PORT as postgres without a password"
if [[ $db_exists != 1 ]]; then
	psql_pg -d postgres -c "create database $PG_DB" >&2 || die "create database $PG_DB failed"
fi

# --- the tests' environment ---------------------------------------------------

cat >"$STATE/env.sh" <<EOF
# Written by test/env/up.sh: source it before go test -tags integration.
export SLUICE_TEST_KAFKA_BROKERS=$KAFKA_BROKERS
export SLUICE_TEST_PG_DSN='$PG_DSN'
EOF

say "ready in $((SECONDS - start_time))s; logs: test/env/logs.sh; stop: test/env/down.sh"
printf 'export SLUICE_TEST_KAFKA_BROKERS=%s\n' "$KAFKA_BROKERS"
printf "export SLUICE_TEST_PG_DSN='%s'\n" "$PG_DSN"
