#!/usr/bin/env bash
# Python Velithon 0.6.0 against VSP, for scale: `vsp bench` (64 concurrent get_user calls, one
# client) against a Velithon VSP server and against examples/user_service, in the same run,
# alternating, medians of ROUNDS rounds of SECS each. Both servers answer the same get_user
# (a dict / struct of three strings); the client, both servers and this script share the
# machine's cores alike. Usage: bash benches/velithon.sh (VELITHON_PYTHON, ROUNDS, SECS).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${VELITHON_PYTHON:-target/velithon-venv/bin/python}
rounds=${ROUNDS:-3}
secs=${SECS:-5}
"$python" -c "import velithon.vsp" || {
  echo "Velithon is not importable by $python (bash .ci/run installs it)" >&2
  exit 1
}
cargo build -q --profile bench -p vsp-rpc --features cli --bin vsp
cargo build -q --profile bench -p vsp-suite --example user_service
vsp=target/release/vsp

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
py_port=$(free_port)
rs_port=$(free_port)
"$python" tests/python/velithon_server.py "$py_port" >/dev/null &
py_pid=$!
target/release/examples/user_service --addr "127.0.0.1:$rs_port" >/dev/null &
rs_pid=$!
trap 'kill $py_pid $rs_pid 2>/dev/null || true' EXIT

# Waits (bounded) until the server at $1 answers a get_user call.
wait_ready() {
  for _ in $(seq 100); do
    if "$vsp" call "127.0.0.1:$1" get_user '{"user_id":"123"}' --service "$2" --timeout 1s >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "the $2 server on port $1 did not answer get_user within 10 s" >&2
  exit 1
}
wait_ready "$py_port" py-users
wait_ready "$rs_port" user-service

# Calls per second of one `vsp bench` run against port $1 (service $2).
bench() {
  "$vsp" bench "127.0.0.1:$1" get_user '{"user_id":"123"}' --service "$2" -c 64 -d "${secs}s" --json |
    "$python" -c 'import json,sys; r=json.load(sys.stdin); assert r["ok"] == r["calls"], r; print(r["calls_per_sec"], r["latency_ms"]["p50"])'
}

py=()
rs=()
for round in $(seq "$rounds"); do
  py+=("$(bench "$py_port" py-users)")
  rs+=("$(bench "$rs_port" user-service)")
  echo "round $round: Velithon ${py[-1]}, VSP ${rs[-1]} (calls/s, p50 ms)" >&2
done
"$python" - "${py[@]}" -- "${rs[@]}" <<'EOF'
import statistics, sys
args = sys.argv[1:]
cut = args.index("--")
py = [tuple(map(float, a.split())) for a in args[:cut]]
rs = [tuple(map(float, a.split())) for a in args[cut + 1:]]
med = lambda xs, i: statistics.median(x[i] for x in xs)
print("| server (vsp bench, 64 concurrent get_user) | calls/s | p50 ms |")
print("|---|---:|---:|")
print(f"| Python Velithon 0.6.0 VSPManager | {med(py, 0):,.0f} | {med(py, 1):.2f} |")
print(f"| examples/user_service (VSP, Rust) | {med(rs, 0):,.0f} | {med(rs, 1):.2f} |")
print(f"\nVSP / Velithon: {med(rs, 0) / med(py, 0):.1f}x the calls per second")
EOF
