#!/usr/bin/env bash
# The test suite (`make test`) as two pytest processes at once: the tests that start the real
# stack or a PostgreSQL of their own, a Prefect server with its worker, the CLI as subprocesses
# and DVC in a fresh clone (mostly waiting on servers and subprocesses) beside everything else.
# Extra arguments go to both. Each prints its slowest tests. Exits non-zero if either failed.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SERVERS=(tests/integration/test_stack_auth.py tests/integration/test_stack.py tests/integration/test_prefect_deployments.py
         tests/integration/test_cli_errors.py tests/integration/test_dvc_pipeline.py
         tests/integration/test_history_postgres.py tests/integration/test_logs_s3.py)
log=$(mktemp -t driftloop-server-tests.XXXXXX)
"$PY" -m pytest -p no:cacheprovider --durations=10 "${SERVERS[@]}" "$@" >"$log" 2>&1 &
servers=$!
ignore=()
for f in "${SERVERS[@]}"; do ignore+=("--ignore=$f"); done
"$PY" -m pytest --durations=15 "${ignore[@]}" "$@"
rc_main=$?
wait "$servers"
rc_servers=$?
[ "$rc_servers" = 5 ] && rc_servers=0   # none selected (e.g. -m "not slow")
echo
echo "=============== the server tests (${SERVERS[*]}), run alongside ==============="
cat "$log"
rm -f "$log"
echo "main suite: exit $rc_main; server tests: exit $rc_servers"
[ "$rc_main" = 0 ] && [ "$rc_servers" = 0 ]
