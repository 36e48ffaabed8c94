# Start a throwaway PostgreSQL server on loopback for the storage tests and export its URL.
#
# Meant to be sourced (by .ci/run):  source .ci/postgres.sh  ->  LBSEARCH_TEST_PG_URL is exported.
# Running it directly works too and prints the URL. Installs Debian's `postgresql` when it is missing.
# Settings (environment, all optional): LBSEARCH_PG_PORT (5432), LBSEARCH_PG_DATA (/tmp/lbsearch-pg),
# LBSEARCH_PG_DB (lbsearch_test). The server trusts loopback connections only and is reused when already up.

lbsearch_start_postgres() {
    local port="${LBSEARCH_PG_PORT:-5432}"
    local data="${LBSEARCH_PG_DATA:-/tmp/lbsearch-pg}"
    local dbname="${LBSEARCH_PG_DB:-lbsearch_test}"
    local bindir

    bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [ -z "$bindir" ]; then
        echo "postgres.sh: installing Debian's postgresql" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2 \
            || { echo "postgres.sh: apt-get install postgresql failed" >&2; return 1; }
        bindir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
    fi

    # The server refuses to run as root: as root, run it as the `postgres` user the package creates.
    local as_owner=()
    if [ "$(id -u)" = 0 ]; then
        as_owner=(runuser -u postgres --)
    fi

    if [ ! -s "$data/PG_VERSION" ]; then
        mkdir -p "$data" || return 1
        [ "$(id -u)" = 0 ] && chown postgres: "$data"
        "${as_owner[@]}" "$bindir/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
            >"$data.initdb.log" 2>&1 \
            || { echo "postgres.sh: initdb failed, see $data.initdb.log" >&2; return 1; }
    fi

    if ! "${as_owner[@]}" "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        # The socket goes to the data folder so that no system-wide folder is needed.
        "${as_owner[@]}" "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $data -c fsync=off" start >/dev/null \
            || { echo "postgres.sh: server did not start (port $port taken? set LBSEARCH_PG_PORT)," \
                "see $data/server.log" >&2; return 1; }
    fi

    local psql=("$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -X -q -t -A)
    if [ "$("${psql[@]}" -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$dbname'")" != 1 ]; then
        "${psql[@]}" -d postgres -c "CREATE DATABASE $dbname" \
            || { echo "postgres.sh: could not create database $dbname" >&2; return 1; }
    fi

    export LBSEARCH_TEST_PG_URL="postgresql+psycopg2://postgres@127.0.0.1:$port/$dbname"
    echo "$LBSEARCH_TEST_PG_URL"
}

# `return` works when sourced, `exit` when run as a script; the helper function is not left behind.
if lbsearch_start_postgres; then
    unset -f lbsearch_start_postgres
    return 0 2>/dev/null || exit 0
fi
unset -f lbsearch_start_postgres
return 1 2>/dev/null || exit 1
