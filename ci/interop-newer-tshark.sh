#!/usr/bin/env bash
# The tshark interoperability tests again, against a newer Wireshark than the system's: Debian
# 12 has tshark 4.0, whose esp_sa table has no columns for extended sequence numbers, so there
# natt's ESN SAs only show that 4.0 skips those columns. Debian 13's tshark (4.4) reads them
# and must verify every ICV of an SA whose high 32 bits only that table says.
#
# Nothing is installed on the system: apt downloads Debian 13's tshark and the libraries it
# needs (its own C library included, about 45 MB) into a directory of their own, dpkg unpacks
# them there, and tshark runs through that C library's loader. Usage: run from the checkout
# with natt and its test extras installed (as .ci/run does); an optional argument names the
# directory to use (default: a new temporary one).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$(realpath "${1:-$(mktemp -d)}")"
mkdir -p "$dir"/{lists/partial,archives/partial,etc/preferences.d,root,bin}
touch "$dir/etc/status"
echo "deb http://deb.debian.org/debian trixie main" > "$dir/etc/sources.list"
apt=(apt-get -qq -o "Dir::Etc::sourcelist=$dir/etc/sources.list" -o Dir::Etc::sourceparts=-
     -o "Dir::State::Lists=$dir/lists" -o "Dir::State::status=$dir/etc/status"
     -o "Dir::Cache::Archives=$dir/archives" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
     -o "Dir::Etc::preferencesparts=$dir/etc/preferences.d" -o Debug::NoLocking=1)
"${apt[@]}" update
"${apt[@]}" install --download-only -y --no-install-recommends tshark >/dev/null
for deb in "$dir"/archives/*.deb; do
    dpkg -x "$deb" "$dir/root"
done
lib="$dir/root/usr/lib/x86_64-linux-gnu"
printf '#!/bin/sh\nexec %s/ld-linux-x86-64.so.2 --library-path %s %s/usr/bin/tshark "$@"\n' \
    "$lib" "$lib" "$dir/root" > "$dir/bin/tshark"
chmod +x "$dir/bin/tshark"
version="$("$dir/bin/tshark" --version | head -1)"
echo "ci: $version"
case "$version" in
    "TShark (Wireshark) 4.0."*|"TShark (Wireshark) 3."*)
        echo "ci: expected a tshark newer than 4.0" >&2; exit 1 ;;
esac
# NATT_TSHARK_ESN_COLUMNS: the ESN test must take the branch of a tshark that reads the columns.
CI=1 NATT_TSHARK_ESN_COLUMNS=1 PATH="$dir/bin:$PATH" pytest -q tests/test_interop_tshark.py
