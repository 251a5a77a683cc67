#!/usr/bin/env bash
# The quick start, end to end on embedded defaults: set up a virtual environment, train a model
# on a data set that ships with scikit-learn, build signed bundles for two hardware profiles,
# verify them, show what one holds, then run the device agent (with a local Mosquitto when one
# is installed), side-load the bundle and score through its local API. Safe to run again.
#   ./demo.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")"
OUT=${1:-demo-out}
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/edgeml ] || ! .venv/bin/python -c "import skl2onnx" 2>/dev/null; then
  echo "==> setting up .venv with edgeml[build]"
  "$PYTHON" -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e ".[build]"
fi
edgeml=.venv/bin/edgeml

echo "==> training the reference model"
.venv/bin/python examples/train_reference_model.py --out "$OUT"

if [ ! -f "$OUT/keys/release.key" ]; then
  echo "==> generating a signing key"
  $edgeml keys generate --out "$OUT/keys" --name release
fi

echo "==> building bundles for raspberry-pi-4 and x86-64-server"
$edgeml build "$OUT/model.skops" \
  --profile raspberry-pi-4 --profile x86-64-server \
  --key "$OUT/keys/release.key" --out "$OUT/bundles" \
  --validation "$OUT/validation.csv" --target diagnosis \
  --name cancer --version 1.0.0

for bundle in "$OUT"/bundles/*.edgeml; do
  echo "==> verifying $bundle"
  $edgeml verify "$bundle" --trust "$OUT/keys/release.pub"
done

echo "==> what a bundle holds"
$edgeml inspect "$OUT/bundles/cancer-1.0.0-raspberry-pi-4.edgeml"
echo "==> the device agent: start it, side-load the Raspberry Pi bundle, score through its local API"
mkdir -p "$OUT/device"
API_PORT=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BROKER_PORT=1883
BROKER_PID=""
if command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; then
  BROKER_PORT=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$BROKER_PORT" > "$OUT/device/mosquitto.conf"
  "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -c "$OUT/device/mosquitto.conf" >/dev/null 2>&1 &
  BROKER_PID=$!
fi
cat > "$OUT/device/agent.toml" <<TOML
device_id = "demo-pi"
profile = "raspberry-pi-4"
state_dir = "state"
trust = "../keys/release.pub"
[broker]
url = "mqtt://127.0.0.1:$BROKER_PORT"
[api]
listen = "127.0.0.1:$API_PORT"
[telemetry]
window_s = 5
TOML
$edgeml agent run --config "$OUT/device/agent.toml" > "$OUT/device/agent.log" 2>&1 &
AGENT_PID=$!
trap 'kill $AGENT_PID ${BROKER_PID} 2>/dev/null || true' EXIT
$edgeml agent install "$OUT/bundles/cancer-1.0.0-raspberry-pi-4.edgeml" --config "$OUT/device/agent.toml"
.venv/bin/python - "$API_PORT" "$OUT/validation.csv" <<'PY'
import csv, json, sys, time, urllib.request
port, validation = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"
for _ in range(100):
    try:
        with urllib.request.urlopen(base + "/v1/health", timeout=2) as answer:
            health = json.load(answer)
            break
    except OSError:
        time.sleep(0.1)
print("health:", health)
with open(validation) as handle:
    rows = list(csv.DictReader(handle))[:3]
body = {"rows": [{k: float(v) for k, v in row.items() if k != "diagnosis"} for row in rows]}
request = urllib.request.Request(base + "/v1/predict", json.dumps(body).encode(), {"Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=5) as answer:
    prediction = json.load(answer)
print("predictions:", prediction["predictions"], "true labels:", [int(r["diagnosis"]) for r in rows])
PY
$edgeml agent status --config "$OUT/device/agent.toml"
echo
echo "done: bundles in $OUT/bundles, build report in $OUT/bundles/report.md, device state in $OUT/device"
