#!/usr/bin/env bash
# cross/test-deb.sh: checks the .deb files of cross/deb.sh without installing them on this machine:
# control fields (Architecture, Depends libc6 (>= 2.31)), the conffile, the maintainer scripts
# (systemd-sysusers, unit enabled and not started, syntax), and every file extracted into a
# throwaway root (dpkg-deb -x): binary (architecture, stripped, runs: natively or under qemu),
# unit, sysusers entry, config, model, docs, owners and modes. For the amd64 package also:
# `check` with the installed config and model, `systemd-analyze verify` and the exposure score
# of the installed unit (at most 2.0).
#   cross/test-deb.sh [aarch64|x86_64|all]   (default all)
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/env.sh

case "${1:-all}" in
  aarch64) archs=(arm64) ;;
  x86_64) archs=(amd64) ;;
  all) archs=(arm64 amd64) ;;
  *) echo "usage: cross/test-deb.sh [aarch64|x86_64|all]" >&2; exit 2 ;;
esac

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fails=0
ok() { echo "  ok: $*"; }
bad() { echo "  FAIL: $*"; fails=$((fails + 1)); }
check() { # description, command...
  local what="$1"; shift
  if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; fi
}

for arch in "${archs[@]}"; do
  deb="$CARGO_TARGET_DIR/debian/mammo-edge_${version}-1_${arch}.deb"
  echo "== $deb"
  [ -f "$deb" ] || { echo "  missing: run cross/deb.sh" >&2; exit 1; }
  root="$work/$arch/root" ctl="$work/$arch/control"
  mkdir -p "$root" "$ctl"
  dpkg-deb -x "$deb" "$root"
  dpkg-deb -e "$deb" "$ctl"

  # control
  [ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] && ok "Architecture $arch" || bad "Architecture"
  depends="$(dpkg-deb -f "$deb" Depends)"
  echo "  Depends: $depends"
  grep -q 'libc6 (>= 2.31)' <<<"$depends" && ok "Depends libc6 (>= 2.31)" || bad "Depends lacks libc6 (>= 2.31)"
  grep -Eq 'libc6 \(>= 2\.(3[2-9]|[4-9][0-9])' <<<"$depends" && bad "Depends names a glibc newer than 2.31"
  check "conffile /etc/mammo-edge/config.toml" grep -qx /etc/mammo-edge/config.toml "$ctl/conffiles"
  for s in postinst prerm postrm; do
    check "$s present, sh syntax" sh -n "$ctl/$s"
  done
  check "postinst creates the user (systemd-sysusers mammo-edge.conf)" grep -q 'systemd-sysusers.* mammo-edge.conf' "$ctl/postinst"
  check "postinst enables mammo-edge.service" grep -q 'deb-systemd-helper enable mammo-edge.service' "$ctl/postinst"
  # (try-restart on upgrade, of a running unit only, is fine)
  if grep -Eq 'deb-systemd-invoke (start|restart) ' "$ctl/postinst"; then bad "postinst starts the unit"; else ok "postinst does not start the unit"; fi
  check "postinst sets root:mammo-edge 0640 on the config" grep -q 'dpkg-statoverride --update --add root mammo-edge' "$ctl/postinst"
  check "prerm stops the unit" grep -q 'deb-systemd-invoke stop.*mammo-edge.service' "$ctl/prerm"
  check "postrm purges the unit state" grep -q 'deb-systemd-helper purge mammo-edge.service' "$ctl/postrm"

  # files, owners and modes (dpkg-deb -c: "mode owner/group size date time ./path")
  listing="$(dpkg-deb -c "$deb")"
  mode_of() { awk -v p="./$1" '$6 == p { print $1 " " $2 }' <<<"$listing"; }
  for entry in "usr/bin/mammo-edge -rwxr-xr-x" "etc/mammo-edge/config.toml -rw-r-----" \
    "usr/lib/systemd/system/mammo-edge.service -rw-r--r--" "usr/lib/sysusers.d/mammo-edge.conf -rw-r--r--" \
    "usr/share/mammo-edge/models/mammo-mtl-demo.int8.onnx -rw-r--r--" \
    "usr/share/mammo-edge/models/mammo-mtl-demo.onnx -rw-r--r--" \
    "usr/share/doc/mammo-edge/deploy.md -rw-r--r--" "usr/share/doc/mammo-edge/MODEL_CARD.md -rw-r--r--"; do
    read -r path mode <<<"$entry"
    # owner printed by name or number, depending on the tar headers
    case "$(mode_of "$path")" in
      "$mode root/root" | "$mode 0/0") ok "/$path $mode root:root" ;;
      *) bad "/$path: '$(mode_of "$path")', expected $mode root:root" ;;
    esac
  done
  check "unit = systemd/mammo-edge.service" cmp "$root/usr/lib/systemd/system/mammo-edge.service" systemd/mammo-edge.service
  check "sysusers = systemd/mammo-edge.sysusers" cmp "$root/usr/lib/sysusers.d/mammo-edge.conf" systemd/mammo-edge.sysusers
  check "config = systemd/config.toml" cmp "$root/etc/mammo-edge/config.toml" systemd/config.toml
  check "model = models/mammo-mtl-demo.int8.onnx" cmp "$root/usr/share/mammo-edge/models/mammo-mtl-demo.int8.onnx" models/mammo-mtl-demo.int8.onnx
  check "float32 model beside it (model.precision = auto)" cmp "$root/usr/share/mammo-edge/models/mammo-mtl-demo.onnx" models/mammo-mtl-demo.onnx
  check "unit runs /usr/bin/mammo-edge with /etc/mammo-edge/config.toml" \
    grep -qx 'ExecStart=/usr/bin/mammo-edge run --config /etc/mammo-edge/config.toml' "$root/usr/lib/systemd/system/mammo-edge.service"
  check "default config points at the packaged model" \
    grep -qx 'path = "/usr/share/mammo-edge/models/mammo-mtl-demo.int8.onnx"' "$root/etc/mammo-edge/config.toml"

  bin="$root/usr/bin/mammo-edge"
  machine="$(readelf -h "$bin" | sed -n 's/^ *Machine: *//p')"
  want=AArch64; [ "$arch" = amd64 ] && want="Advanced Micro Devices X86-64"
  [ "$machine" = "$want" ] && ok "binary is $machine" || bad "binary is $machine, not $want"
  if readelf -S "$bin" | grep -q '\.symtab'; then bad "binary not stripped"; else ok "binary stripped ($(stat -c %s "$bin") bytes)"; fi
  cross/check-glibc.sh "$bin" | sed 's/^/  /' || bad "glibc check of the packaged binary"
  if [ "$arch" = arm64 ]; then
    run=(qemu-aarch64 -cpu "$QEMU_CPU" -L "$A64_SYSROOT" "$bin")
  else
    run=("$bin")
  fi
  check "packaged binary runs (--version = mammo-edge $version)" grep -qx "mammo-edge $version" <("${run[@]}" --version)

  if [ "$arch" = amd64 ]; then
    # The installed config with its paths moved into the throwaway root.
    mkdir -p "$work/export" "$work/state"
    sed -e "s#\"/usr/share/mammo-edge/#\"$root/usr/share/mammo-edge/#" \
      -e "s#^dirs = .*#dirs = [\"$work/export\"]#" -e "s#^dir = \"/var/lib/mammo-edge\"#dir = \"$work/state\"#" \
      "$root/etc/mammo-edge/config.toml" > "$work/config.toml"
    if out="$("$bin" check --config "$work/config.toml" --no-broker 2> "$work/check.log")"; then
      ok "check with the installed config and model: $out"
    else
      bad "check with the installed config and model: $out $(cat "$work/check.log")"
    fi
    unit_dir="$work/unit"
    mkdir -p "$unit_dir"
    sed "s#^ExecStart=/usr/bin/mammo-edge#ExecStart=$bin#" \
      "$root/usr/lib/systemd/system/mammo-edge.service" > "$unit_dir/mammo-edge.service"
    if systemd-analyze verify "$unit_dir/mammo-edge.service" > "$work/verify.txt" 2>&1; then
      ok "systemd-analyze verify"
    else
      bad "systemd-analyze verify: $(cat "$work/verify.txt")"
    fi
    # --threshold=20: exit status non-zero above an exposure of 2.0
    if score="$(systemd-analyze security --offline=true --threshold=20 \
      "$root/usr/lib/systemd/system/mammo-edge.service" 2>&1 | tail -1)"; then
      ok "systemd-analyze security: $score"
    else
      bad "systemd-analyze security above 2.0: $score"
    fi
  fi
done
if [ "$fails" -gt 0 ]; then
  echo "test-deb: $fails check(s) failed"
  exit 1
fi
echo "test-deb: all checks passed"
