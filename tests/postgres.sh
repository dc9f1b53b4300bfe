#!/usr/bin/env bash
# Sourced by tests/run.sh: makes sure a PostgreSQL server runs on this machine and
# that the tests' role exists, then exports MWE_TEST_POSTGRES, the URL the tests
# connect with to create their own fresh databases (each test makes one and drops
# it). Uses the server already running on 127.0.0.1:5432 if there is one, else starts
# Debian's cluster (installing PostgreSQL when it is missing).
# Another server: export MWE_TEST_POSTGRES=postgres://USER:PASSWORD@HOST:PORT/postgres
# (a role that may create databases) before running tests/run.sh.

if [ -z "${MWE_TEST_POSTGRES:-}" ]; then
  as_postgres() {
    if [ "$(id -u)" = 0 ]; then su postgres -c "$*"; else sudo -u postgres sh -c "$*"; fi
  }
  if ! command -v pg_ctlcluster >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
      echo "tests/postgres.sh: the tests need PostgreSQL: sudo apt-get install postgresql" >&2
      exit 1
    fi
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    cluster=$(pg_lsclusters -h | awk '$3 == 5432 { print $1 " " $2; exit }')
    if [ -z "$cluster" ]; then
      echo "tests/postgres.sh: no PostgreSQL cluster on port 5432 (pg_lsclusters)" >&2
      exit 1
    fi
    # shellcheck disable=SC2086
    pg_ctlcluster $cluster start
    # pg_isready --timeout waits for the server to take connections, no fixed sleep.
    pg_isready -q -h 127.0.0.1 -p 5432 --timeout=60
  fi
  as_postgres "psql -q -v ON_ERROR_STOP=1 -d postgres" >/dev/null <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mwe_test') THEN
    CREATE ROLE mwe_test LOGIN CREATEDB PASSWORD 'mwe_test';
  END IF;
END $$;
SQL
  export MWE_TEST_POSTGRES=postgres://mwe_test:mwe_test@127.0.0.1:5432/postgres
fi
# Databases left by an earlier run that was killed before it could drop them: each
# name carries the process id of the test binary that made it (mwe_t_u<pid>_<n>,
# mwe_t_e<pid>_<n>), and only those whose process is gone are dropped, so that a run
# going on beside this one keeps its own.
psql "$MWE_TEST_POSTGRES" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'mwe\_t\_%'" |
  while read -r db; do
    pid=$(printf '%s' "$db" | sed -n 's/^mwe_t_[a-z]\([0-9]*\)_.*/\1/p')
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then continue; fi
    psql "$MWE_TEST_POSTGRES" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null || true
  done
