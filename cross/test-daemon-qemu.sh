#!/usr/bin/env bash
# cross/test-daemon-qemu.sh: integration test of the aarch64 daemon under qemu-aarch64. mosquitto on
# a free loopback port, `mammo-edge run` (aarch64, shipped int8 model) watching a temporary
# folder, a mosquitto_sub subscriber; a 4-view phantom exam (scale 0.1) is dropped in as an
# exporter does (.part, then rename) and 4 `image` + 1 complete `exam` message must arrive,
# valid against docs/schemas/ (Python jsonschema), then SIGTERM: exit 0 and a
# retained `offline` status. Needs both binaries (cross/build.sh all: x86_64 writes the phantoms).
#   MAMMO_CROSS_DAEMON_TIMEOUT  seconds to wait for the messages (default 300)
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/env.sh

for b in "$A64_BIN" "$X64_BIN"; do
  [ -x "$b" ] || { echo "$b missing: run cross/build.sh all" >&2; exit 1; }
done
for c in /usr/sbin/mosquitto mosquitto_sub qemu-aarch64; do
  command -v "$c" >/dev/null || { echo "$c missing: run cross/setup.sh" >&2; exit 1; }
done

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  echo "--- daemon log (last 40 lines)" >&2; tail -40 "$work/daemon.log" >&2 || true
  echo "--- messages" >&2; cut -c1-200 "$work/messages.txt" >&2 || true
  exit 1
}

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
prefix="mammo/qemu/edge-$port"
wait_for() { # seconds, description, command...
  local deadline=$(($(date +%s) + $1)) what="$2"; shift 2
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "no $what within the time limit"
    sleep 0.5
  done
}

printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" > "$work/mosquitto.conf"
/usr/sbin/mosquitto -c "$work/mosquitto.conf" > "$work/mosquitto.log" 2>&1 &
pids+=($!)
wait_for 10 "broker on port $port" bash -c "echo > /dev/tcp/127.0.0.1/$port" 2>/dev/null

# -v: "topic payload" per line (the payloads are single-line JSON)
mosquitto_sub -h 127.0.0.1 -p "$port" -q 1 -v -t "$prefix/#" > "$work/messages.txt" 2>"$work/sub.log" &
pids+=($!)

mkdir -p "$work/export" "$work/state"
cat > "$work/config.toml" <<TOML
[watch]
dirs = ["$work/export"]
stable_secs = 1
rescan_secs = 2
[state]
dir = "$work/state"
[model]
path = "$PWD/models/mammo-mtl-demo.int8.onnx"
precision = "file"
[mqtt]
url = "mqtt://127.0.0.1:$port"
topic_prefix = "$prefix"
client_id = "qemu-edge-$port"
[exam]
quiet_secs = 600
TOML

"$X64_BIN" synth --out "$work/phantom" --count 4 --seed 21 --scale 0.1 --threads 2 >/dev/null 2>&1
mapfile -t files < <(find "$work/phantom/images" -type f -name '*.dcm' | sort)
[ ${#files[@]} -eq 4 ] || fail "synth wrote ${#files[@]} files, not 4"

t0=$(date +%s)
env -u NOTIFY_SOCKET -u WATCHDOG_USEC -u WATCHDOG_PID -u JOURNAL_STREAM -u INVOCATION_ID \
  RUST_LOG=info qemu-aarch64 -cpu "$QEMU_CPU" -L "$A64_SYSROOT" "$A64_BIN" run --config "$work/config.toml" \
  > /dev/null 2> "$work/daemon.log" &
daemon=$!
pids+=("$daemon")
count() { grep -c "^$prefix/$1 " "$work/messages.txt" || true; }
online() { grep -q "^$prefix/status online" "$work/messages.txt"; }
wait_for 120 "status online from the daemon" online
echo "daemon online after $(since "$t0") s"
# the aarch64 build of tract is the one running (its CPU detection logs as tract_linalg::arm64)
wait_for 60 "aarch64 tract in the daemon log" grep -q 'tract_linalg::arm64' "$work/daemon.log"

t0=$(date +%s)
for f in "${files[@]}"; do
  name="$(basename "$f")"
  cp "$f" "$work/export/$name.part"
  mv "$work/export/$name.part" "$work/export/$name"
done
done_msgs() { [ "$(count image)" -ge 4 ] && [ "$(count exam)" -ge 1 ]; }
wait_for "${MAMMO_CROSS_DAEMON_TIMEOUT:-300}" "4 image + 1 exam messages" done_msgs
sleep 2 # anything extra (a duplicate, an error) would arrive now
echo "4 images scored and published in $(since "$t0") s"

kill -TERM "$daemon"
status=0
wait "$daemon" || status=$?
[ "$status" -eq 0 ] || fail "daemon exit status $status after SIGTERM"
wait_for 10 "retained offline status" grep -q "^$prefix/status offline" "$work/messages.txt"

echo "== messages"
python3 - "$work/messages.txt" "$prefix" <<'PY'
import json, sys, pathlib
path, prefix = sys.argv[1], sys.argv[2]
msgs = {}
for line in open(path):
    topic, _, payload = line.rstrip("\n").partition(" ")
    msgs.setdefault(topic[len(prefix) + 1:], []).append(payload)
print({k: len(v) for k, v in sorted(msgs.items())})
images = [json.loads(p) for p in msgs.get("image", [])]
exams = [json.loads(p) for p in msgs.get("exam", [])]
assert len(images) == 4, f"{len(images)} image messages, expected 4"
assert len(exams) == 1, f"{len(exams)} exam messages, expected 1"
assert not msgs.get("error") and not msgs.get("skipped"), "error/skipped messages"
import jsonschema  # cross/setup.sh installs it
for name, payloads in (("image", images), ("exam", exams)):
    schema = json.loads(pathlib.Path(f"docs/schemas/{name}.json").read_text())
    for p in payloads:
        jsonschema.validate(p, schema)
print("schemas: image and exam payloads valid")
assert all(p["schema"] == "mammo-edge.image/1" for p in images)
views = sorted(f'{p["laterality"]}-{p["view"]}' for p in images)
assert views == ["L-CC", "L-MLO", "R-CC", "R-MLO"], views
exam = exams[0]
assert exam["schema"] == "mammo-edge.exam/1" and exam["complete"] is True, exam
assert sorted(exam["image_result_ids"]) == sorted(p["result_id"] for p in images)
for p in images:
    print(f'  image {p["laterality"]}-{p["view"]}: cancer {p["cancer_probability"]:.4f}, '
          f'density {p["density"]}, model {p["model"]["name"]} {p["model"]["version"]}')
print(f'  exam: complete, triage {exam.get("triage")}, revision {exam.get("revision")}')
PY
echo "daemon under qemu: 1 passed, 0 failed"
