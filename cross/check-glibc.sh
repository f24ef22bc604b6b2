#!/usr/bin/env bash
# cross/check-glibc.sh: fails when a binary needs a newer glibc than the appliance's (2.31,
# Ubuntu 20.04 / JetPack 5), any GLIBC_PRIVATE symbol, or (if C++ is linked against libstdc++)
# GLIBCXX_ / CXXABI_ versions newer than Ubuntu 20.04's. Prints the highest versions and the
# shared libraries needed.
#   cross/check-glibc.sh BINARY...
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/env.sh

[ $# -gt 0 ] || { echo "usage: cross/check-glibc.sh BINARY..." >&2; exit 2; }
# GNU readelf reads ELF files of any architecture; the cross one is preferred where installed.
readelf=readelf
command -v aarch64-linux-gnu-readelf >/dev/null && readelf=aarch64-linux-gnu-readelf

# highest VERSION among the "Name: PREFIX_VERSION" entries of the version-needs section
highest() { { grep -o "Name: $1_[0-9][0-9.]*" || true; } | sed "s/^Name: $1_//" | sort -V | tail -1; }
# true when version $1 > $2
newer() { [ "$1" != "$2" ] && [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | tail -1)" = "$1" ]; }

fail=0
for bin in "$@"; do
  [ -f "$bin" ] || { echo "$bin: missing" >&2; exit 1; }
  needs="$($readelf --wide -V "$bin" | sed -n '/Version needs section/,$p')"
  machine="$($readelf -h "$bin" | sed -n 's/^ *Machine: *//p')"
  libs="$($readelf --wide -d "$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
  glibc="$(highest GLIBC <<<"$needs")"
  echo "$bin ($machine)"
  echo "  needs: $libs"
  echo "  highest GLIBC_$glibc (limit $GLIBC_MAX)"
  if [ -z "$glibc" ]; then
    echo "  FAIL: no GLIBC symbol versions found (not a dynamically linked glibc binary?)"; fail=1
  elif newer "$glibc" "$GLIBC_MAX"; then
    echo "  FAIL: GLIBC_$glibc > $GLIBC_MAX; symbols:"
    $readelf --wide --dyn-syms "$bin" | grep -o '[^ ]*@GLIBC_[0-9.]*' | sort -u |
      while read -r s; do if newer "${s##*@GLIBC_}" "$GLIBC_MAX"; then echo "    $s"; fi; done
    fail=1
  fi
  if grep -q 'GLIBC_PRIVATE' <<<"$needs"; then
    echo "  FAIL: needs GLIBC_PRIVATE"; fail=1
  fi
  for pair in "GLIBCXX $GLIBCXX_MAX" "CXXABI $CXXABI_MAX"; do
    read -r name limit <<<"$pair"
    v="$(highest "$name" <<<"$needs")"
    [ -z "$v" ] && continue
    echo "  highest ${name}_$v (limit $limit)"
    if newer "$v" "$limit"; then echo "  FAIL: ${name}_$v > $limit"; fail=1; fi
  done
done
exit $fail
