#!/usr/bin/env bash
# Property-based check that the management API's OpenAPI document describes exactly what the
# control plane accepts and answers: schemathesis sends schema-valid and schema-invalid requests
# to every operation of a real control plane and fails on any mismatch (--checks all).
#
# Usage: .ci/schemathesis.sh            (from the repository root, after `cargo build`)
# Env:   OUTPOST_BIN          the binary to test (default target/debug/outpost)
#        SCHEMATHESIS_VENV    where schemathesis is installed (default target/schemathesis-venv)
#        SCHEMATHESIS_EXAMPLES  examples per operation (default 50)
#        SCHEMATHESIS_SEED    the seed (default fixed, so a failure reproduces; set another to explore)
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: a new release may add checks, and CI should change only when this line does.
version="4.32.5"
venv="${SCHEMATHESIS_VENV:-target/schemathesis-venv}"
bin="${OUTPOST_BIN:-target/debug/outpost}"
examples="${SCHEMATHESIS_EXAMPLES:-50}"
seed="${SCHEMATHESIS_SEED:-20240610}"
started=$SECONDS

if [ "$("$venv/bin/schemathesis" --version 2>/dev/null | awk '{print $NF}')" != "$version" ]; then
  echo "installing schemathesis $version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi
[ -x "$bin" ] || { echo "schemathesis: $bin is missing; run cargo build first" >&2; exit 1; }

work="$(mktemp -d)"
cp_pid=""
cleanup() {
  if [ -n "$cp_pid" ]; then kill "$cp_pid" 2>/dev/null || true; wait "$cp_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# A fresh data directory (the control plane creates it 0700; mktemp's own is shared with the
# cleanup), port 0 for both listeners (the bound address is read back from the start line, so
# no port can be taken in between), and a token of our own.
token="schemathesis-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
OUTPOST_STORE_DATA_DIR="$work/data" \
  OUTPOST_ADMIN_LISTEN=127.0.0.1:0 \
  OUTPOST_GATEWAY_API_LISTEN=127.0.0.1:0 \
  OUTPOST_ADMIN_TOKEN="$token" \
  OUTPOST_LOG_LEVEL=warn \
  "$bin" control-plane >"$work/cp.log" 2>&1 &
cp_pid=$!

url=""
for _ in $(seq 1 100); do
  url="$(sed -n 's/.*management API and dashboard on \(http:\/\/[0-9.:]*\).*/\1/p' "$work/cp.log" | head -n1)"
  [ -n "$url" ] && break
  kill -0 "$cp_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$url" ]; then
  echo "schemathesis: the control plane did not start:" >&2
  cat "$work/cp.log" >&2
  exit 1
fi
echo "schemathesis $version against $url ($examples examples per operation, seed $seed)"

status=0
PYTHONPATH=.ci "$venv/bin/schemathesis" --config-file .ci/schemathesis.toml run "$url/api/v1/openapi.json" \
  --max-examples "$examples" \
  --seed "$seed" \
  --header "Authorization: Bearer $token" \
  --generation-database none \
  --workers 2 \
  --no-color \
  --report junit --report-junit-path "$work/junit.xml" \
  --report-dir "$work/report" || status=$?

if ! kill -0 "$cp_pid" 2>/dev/null; then
  echo "schemathesis: the control plane died during the run:" >&2
  cat "$work/cp.log" >&2
  status=1
fi

# One line for the CI log, from the JUnit report (one test case per operation).
read -r tests failures errors < <(python3 - "$work/junit.xml" <<'EOF' || echo "0 0 1"
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
t = sum(int(s.get("tests", 0)) for s in suites)
f = sum(int(s.get("failures", 0)) for s in suites)
e = sum(int(s.get("errors", 0)) for s in suites)
print(t, f, e)
EOF
)
if [ "$status" -ne 0 ] && [ "$((failures + errors))" -eq 0 ]; then errors=1; fi
echo "schemathesis: $tests test cases in the JUnit report, at most $examples examples per operation and phase, seed $seed, $((SECONDS - started)) s"
echo "schemathesis: $((tests - failures - errors)) passed, $((failures + errors)) failed"
exit "$status"
