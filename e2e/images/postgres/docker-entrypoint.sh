#!/usr/bin/env bash
# Entrypoint with the contract of the official postgres image, so that manifests written for
# it work unchanged:
#   POSTGRES_PASSWORD    superuser password; required to initialise unless
#                        POSTGRES_HOST_AUTH_METHOD=trust
#   POSTGRES_USER        superuser name (postgres)
#   POSTGRES_DB          database created at initialisation (the user's name)
#   POSTGRES_INITDB_ARGS extra initdb arguments, shell-quoted
#   POSTGRES_INITDB_WALDIR  WAL directory outside PGDATA
#   POSTGRES_HOST_AUTH_METHOD  pg_hba method for TCP connections from anywhere (default: the
#                        server's password_encryption, i.e. scram-sha-256)
#   each of the first four also as VAR_FILE (a file holding the value, e.g. a mounted secret)
#   PGDATA               data directory; initialised only when it has no PG_VERSION
#   /docker-entrypoint-initdb.d/*.sql, *.sql.gz, *.sh  run once, in name order, after initialisation
#                        (executable .sh files are run, others sourced)
# Arguments: `postgres ...` or options only (`-c x=y ...`) start the server with them; anything
# else is run as given. As root, it fixes ownership and drops to the postgres user; otherwise
# it writes only to PGDATA, the socket directory and /tmp (a read-only root works).
set -euo pipefail

# Progress goes to stdout with the server's and psql's output, in order; errors to stderr.
log() { printf '%s: %s\n' "${0##*/}" "$*"; }
die() { log "error: $*" >&2; exit 1; }

# load VAR [DEFAULT]: take VAR, else the contents of the file named by VAR_FILE, else DEFAULT.
load() {
	local var=$1 file_var=$1_FILE value
	if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
		die "$var and $file_var are both set; use one"
	fi
	value=${!var:-}
	if [ -z "$value" ] && [ -n "${!file_var:-}" ]; then
		value=$(<"${!file_var}")
	fi
	export "$var=${value:-${2:-}}"
	unset "$file_var"
}

# True when the server arguments only ask for information (the server would exit at once).
asks_for_info() {
	local a
	for a; do
		case $a in -'?' | --help | --describe-config | -V | --version) return 0 ;; esac
	done
	return 1
}

# SQL as the superuser over the Unix socket of the temporary server (in POSTGRES_DB unless
# the arguments name another database); sourced init scripts may use it too.
docker_process_sql() {
	PGHOST= PGHOSTADDR= psql -v ON_ERROR_STOP=1 --no-password --no-psqlrc --username "$POSTGRES_USER" \
		--dbname "$POSTGRES_DB" "$@"
}

# initialise SERVER_ARGS...: create the cluster in PGDATA, then the database and init scripts.
initialise() {
	if [ -z "$POSTGRES_PASSWORD" ] && [ "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]; then
		die "the database is not initialised and POSTGRES_PASSWORD is empty; set it (or, insecure," \
			"POSTGRES_HOST_AUTH_METHOD=trust to accept any connection without a password)"
	fi
	[ "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ] ||
		log "warning: POSTGRES_HOST_AUTH_METHOD=trust: every client that reaches the port gets in without a password" >&2
	# Fail now rather than after initdb if the scripts cannot be read.
	ls /docker-entrypoint-initdb.d/ >/dev/null

	local initdb=(initdb --username="$POSTGRES_USER")
	[ -z "${POSTGRES_INITDB_WALDIR:-}" ] || initdb+=(--waldir="$POSTGRES_INITDB_WALDIR")
	# The password goes in on stdin, never through a file or the command line.
	[ -z "$POSTGRES_PASSWORD" ] || initdb+=(--pwfile=/dev/stdin)
	eval '"${initdb[@]}"' "$POSTGRES_INITDB_ARGS" <<<"$POSTGRES_PASSWORD"

	# Reachable over TCP on every address (the server's default is localhost only); TCP clients
	# other than localhost authenticate with the method (initdb trusts local connections).
	local method=${POSTGRES_HOST_AUTH_METHOD:-}
	[ -n "$method" ] || method=$(postgres -C password_encryption "$@")
	printf "\n# added at initialisation\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
	printf '\n# added at initialisation\nhost all all all %s\n' "$method" >>"$PGDATA/pg_hba.conf"

	# A temporary server on the Unix socket only, so no client can connect before the
	# database and the init scripts are done.
	export PGPASSWORD=${PGPASSWORD:-$POSTGRES_PASSWORD}
	postgres "$@" -c listen_addresses= -p "${PGPORT:-5432}" &
	local pid=$!
	# (As the new superuser: the server would log a failed login for a role that does not exist.)
	until PGHOST= PGHOSTADDR= pg_isready -q -p "${PGPORT:-5432}" -U "$POSTGRES_USER" -d postgres; do
		kill -0 "$pid" 2>/dev/null || { wait "$pid" || true; die "the temporary server did not start"; }
		sleep 0.2
	done

	local exists
	exists=$(docker_process_sql --dbname postgres --tuples-only --no-align --set db="$POSTGRES_DB" \
		<<<"SELECT 1 FROM pg_database WHERE datname = :'db'")
	[ -n "$exists" ] || docker_process_sql --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db"'

	local f
	for f in /docker-entrypoint-initdb.d/*; do
		[ -e "$f" ] || continue
		case $f in
		*.sh)
			log "running $f"
			if [ -x "$f" ]; then
				"$f"
			else
				# Sourced scripts were written for a shell without nounset.
				set +u
				. "$f"
				set -u
			fi
			;;
		*.sql) log "running $f"; docker_process_sql -f "$f" ;;
		*.sql.gz) log "running $f"; gzip -dc "$f" | docker_process_sql ;;
		*) log "ignoring $f" ;;
		esac
	done

	kill -INT "$pid"
	wait "$pid"
	unset PGPASSWORD
	log "initialisation complete"
}

main() {
	[ $# -gt 0 ] || set -- postgres
	case $1 in -*) set -- postgres "$@" ;; esac
	if [ "$1" != postgres ] || asks_for_info "$@"; then
		exec "$@"
	fi

	load POSTGRES_PASSWORD
	load POSTGRES_USER postgres
	load POSTGRES_DB "$POSTGRES_USER"
	load POSTGRES_INITDB_ARGS
	: "${PGDATA:?PGDATA must be set}"

	if [ "$(id -u)" = 0 ]; then
		# Started as root (e.g. with a fresh root-owned volume): hand the directories to
		# postgres, then run this script again as postgres.
		mkdir -p "$PGDATA" /var/run/postgresql ${POSTGRES_INITDB_WALDIR:+"$POSTGRES_INITDB_WALDIR"}
		find "$PGDATA" /var/run/postgresql ${POSTGRES_INITDB_WALDIR:+"$POSTGRES_INITDB_WALDIR"} \
			\! -user postgres -exec chown postgres: {} +
		exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
	fi

	mkdir -p "$PGDATA"
	# The server refuses a data directory others can read; this may fail on odd volumes,
	# and then the server's own message says why.
	chmod 0700 "$PGDATA" 2>/dev/null || true
	if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
		mkdir -p "$POSTGRES_INITDB_WALDIR"
		chmod 0700 "$POSTGRES_INITDB_WALDIR" 2>/dev/null || true
	fi

	if [ -s "$PGDATA/PG_VERSION" ]; then
		log "$PGDATA holds a database (PostgreSQL $(<"$PGDATA/PG_VERSION")); not initialising"
	else
		initialise "${@:2}"
	fi
	exec "$@"
}

main "$@"
