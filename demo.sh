#!/usr/bin/env bash
# The quick start, end to end on embedded defaults: set up a virtual environment, train a model
# on a data set that ships with scikit-learn, build signed bundles for two hardware profiles,
# verify them, show what one holds; then enroll five devices (broker credentials, per-device
# ACL), run a local Mosquitto with that config, the fleet service and the five agents: stage the
# good bundle to every device, watch a bad one break the drift gate on the canary and roll back
# by itself. Safe to run again.
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
echo "==> building the bad bundle: cancer 2.0.0, its drift baseline from recalibrated sensors"
$edgeml build "$OUT/model.skops" --profile raspberry-pi-4 \
  --key "$OUT/keys/release.key" --out "$OUT/bad-bundles" \
  --validation "$OUT/drifted-validation.csv" --target diagnosis \
  --name cancer --version 2.0.0

if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing Mosquitto (the local broker)"
    apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null
  else
    echo "the fleet demo needs Mosquitto: sudo apt-get install -y mosquitto" >&2
    exit 2
  fi
fi

.venv/bin/python examples/fleet_demo.py --out "$OUT" \
  --good "$OUT/bundles/cancer-1.0.0-raspberry-pi-4.edgeml" \
  --bad "$OUT/bad-bundles/cancer-2.0.0-raspberry-pi-4.edgeml" \
  --trust "$OUT/keys/release.pub" --validation "$OUT/validation.csv"
echo
echo "done: bundles in $OUT/bundles, build report in $OUT/bundles/report.md, the fleet in $OUT/fleet"
