#!/usr/bin/env bash
# Grants (or with --remove, revokes) the Kafka ACLs of sluice's principals,
# exactly the lines of sluice-acls.txt, with kafka-acls.sh. Explained in
# docs/kafka-security.md.
#
# Usage:
#   TOPICS=orders GROUP=orders-sink BOOTSTRAP_SERVER=kafka-0:9093 \
#   COMMAND_CONFIG=admin.properties deploy/kafka-acls/sluice-acls.sh [--dry-run] [--remove]
#
# Variables (the names of sluice's configuration in brackets):
#   TOPICS            comma-separated source topics [kafka.topics]             (required)
#   GROUP             the consumer group [kafka.group]                         (required)
#   DLQ_TOPIC         the dead-letter topic [dlq.topic]                        (default $GROUP.dlq)
#   REPLAY_GROUP      the group of `sluice dlq replay` [--group]               (default $GROUP.dlq-replay)
#   SLUICE_PRINCIPAL  the principal `sluice run` connects as                   (default User:sluice)
#   REPLAY_PRINCIPAL  the principal `sluice dlq replay` connects as            (default User:sluice-replay)
#   ROLES             which roles' lines to apply: sluice, replay or both      (default sluice,replay)
#   BOOTSTRAP_SERVER  brokers for kafka-acls.sh --bootstrap-server             (required unless --dry-run)
#   COMMAND_CONFIG    client properties of an admin principal (TLS, SASL)     (optional)
#   KAFKA_ACLS        the kafka-acls.sh to run                                 (default kafka-acls.sh on PATH)
#
# --dry-run prints the commands, one a line, and runs nothing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
acls_file=${ACLS_FILE:-$here/sluice-acls.txt}
dry_run=false
action=--add
for arg in "$@"; do
	case $arg in
	--dry-run) dry_run=true ;;
	--remove) action=--remove ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "sluice-acls.sh: unknown argument $arg (try --help)" >&2
		exit 2
		;;
	esac
done

fail() {
	echo "sluice-acls.sh: $*" >&2
	exit 2
}
name_ok() { [[ $1 =~ ^[A-Za-z0-9._-]+$ ]]; }

: "${TOPICS:?TOPICS is required: the comma-separated source topics (kafka.topics)}"
: "${GROUP:?GROUP is required: the consumer group (kafka.group)}"
DLQ_TOPIC=${DLQ_TOPIC:-$GROUP.dlq}
REPLAY_GROUP=${REPLAY_GROUP:-$GROUP.dlq-replay}
SLUICE_PRINCIPAL=${SLUICE_PRINCIPAL:-User:sluice}
REPLAY_PRINCIPAL=${REPLAY_PRINCIPAL:-User:sluice-replay}
ROLES=${ROLES:-sluice,replay}
KAFKA_ACLS=${KAFKA_ACLS:-kafka-acls.sh}
IFS=, read -r -a topics <<<"$TOPICS"
for n in "${topics[@]}" "$GROUP" "$DLQ_TOPIC" "$REPLAY_GROUP"; do
	name_ok "$n" || fail "\"$n\" is not a Kafka topic or group name"
done
[[ $SLUICE_PRINCIPAL == *:* && $REPLAY_PRINCIPAL == *:* ]] || fail "principals are written Type:name, such as User:sluice"

common=()
if ! $dry_run; then
	: "${BOOTSTRAP_SERVER:?BOOTSTRAP_SERVER is required (or use --dry-run)}"
	common+=(--bootstrap-server "$BOOTSTRAP_SERVER")
	if [[ -n ${COMMAND_CONFIG:-} ]]; then
		common+=(--command-config "$COMMAND_CONFIG")
	fi
fi
extra=()
[[ $action == --remove ]] && extra+=(--force)

run() {
	if $dry_run; then
		printf '%q ' "$@" | sed 's/ $//'
		echo
	else
		"$@"
	fi
}

lines=0
while read -r role resource name operation _; do
	[[ -z $role || $role == \#* ]] && continue
	case $role in
	sluice) principal=$SLUICE_PRINCIPAL ;;
	replay) principal=$REPLAY_PRINCIPAL ;;
	*) fail "$acls_file: unknown role $role" ;;
	esac
	[[ ,$ROLES, == *,$role,* ]] || continue
	case $resource in
	topic | group) ;;
	*) fail "$acls_file: unknown resource type $resource" ;;
	esac
	# shellcheck disable=SC2016 # the placeholders are literal text of the table
	case $name in
	'${TOPIC}') names=("${topics[@]}") ;;
	'${GROUP}') names=("$GROUP") ;;
	'${DLQ_TOPIC}') names=("$DLQ_TOPIC") ;;
	'${REPLAY_GROUP}') names=("$REPLAY_GROUP") ;;
	*) fail "$acls_file: unknown name $name" ;;
	esac
	for n in "${names[@]}"; do
		run "$KAFKA_ACLS" "${common[@]}" "$action" "${extra[@]}" --allow-principal "$principal" --allow-host '*' \
			--operation "$operation" --resource-pattern-type literal "--$resource" "$n"
		lines=$((lines + 1))
	done
done <"$acls_file"
((lines > 0)) || fail "no ACL of roles $ROLES in $acls_file"
