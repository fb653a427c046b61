#!/usr/bin/env bash
# System packages natt needs to build and test: OpenSSL 3 headers for the
# extension, a C compiler (the ratio benchmark compiles a bare EVP loop),
# tshark for the interoperability tests and valgrind (benchmarks/call_instructions.py
# counts instructions with it). Installs only what is missing.
set -euo pipefail
need=()
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v tshark >/dev/null 2>&1 || need+=(tshark)
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
if [ ${#need[@]} -gt 0 ]; then
    echo "ci: installing ${need[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
pkg-config --modversion libcrypto
