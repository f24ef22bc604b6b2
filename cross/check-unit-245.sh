#!/usr/bin/env bash
# cross/check-unit-245.sh: the unit must keep working on systemd 245 (Ubuntu 20.04 / JetPack 5),
# which CI cannot run. systemd 245 ignores a directive it does not know ("Unknown key name ...
# ignoring"), which is graceful only when nothing depends on it. So every directive newer than
# 245 that the unit uses must be marked with its version, "(vNNN+)", in a comment just above it
# (systemd/README.md says what each one costs on 245). Fails on an unmarked one.
#   cross/check-unit-245.sh [UNIT]   (default systemd/mammo-edge.service)
set -euo pipefail
cd "$(dirname "$0")/.."
unit="${1:-systemd/mammo-edge.service}"

# [Unit]/[Service]/[Install] directives added after systemd 245, with the version that added
# them (systemd's NEWS and the "Added in version" notes of systemd.exec/service/resource-control/unit).
newer="
ProcSubset 247
ProtectProc 247
LoadCredential 247
SetCredential 247
SystemCallLog 247
MountImages 247
RootImageOptions 247
ManagedOOMSwap 247
ManagedOOMMemoryPressure 247
ManagedOOMMemoryPressureLimit 247
ManagedOOMPreference 248
CoredumpFilter 246
TimeoutStartFailureMode 246
TimeoutStopFailureMode 246
RootHashSignature 246
PrivateIPC 248
IPCNamespacePath 248
ExecPaths 248
NoExecPaths 248
ExtensionImages 248
RestrictFileSystems 249
SocketBindAllow 249
SocketBindDeny 249
RuntimeRandomizedExtraSec 249
LoadCredentialEncrypted 250
SetCredentialEncrypted 250
RestrictNetworkInterfaces 250
ExitType 250
StartupAllowedCPUs 252
StartupAllowedMemoryNodes 252
OpenFile 253
ReloadSignal 253
LogFilterPatterns 253
MemoryZSwapMax 253
ImportCredential 254
MemoryKSM 254
RestartMode 254
RestartSteps 254
RestartMaxDelaySec 254
DelegateSubgroup 254
SetLoginEnvironment 255
BindLogSockets 256
PrivatePIDs 257
"
[ -f "$unit" ] || { echo "$unit: missing" >&2; exit 1; }
fail=0 used=0 prev=""
while IFS= read -r line; do
  key="${line%%=*}"
  if [[ "$line" =~ ^[A-Za-z]+= ]]; then
    version="$(awk -v k="$key" '$1 == k { print $2 }' <<<"$newer")"
    if [ -n "$version" ]; then
      used=$((used + 1))
      if [[ "$prev" =~ \(v[0-9]+\+\) ]]; then
        echo "ok: $key (systemd $version) is marked: ${prev#\# }"
      else
        echo "FAIL: $key needs systemd $version; mark it with a \"(v$version+)\" comment above and say in systemd/README.md what 245 loses"
        fail=1
      fi
    fi
  fi
  prev="$line"
done < "$unit"
echo "$unit: $used directive(s) newer than systemd 245, all marked: $([ $fail -eq 0 ] && echo yes || echo no)"
exit $fail
