#!/usr/bin/env bash
# Installs what drover's tests need on a fresh Debian machine (see ../shared/TESTBED.md).
# Idempotent: installs only what is missing. Needs root (or sudo) when something is missing.
set -euo pipefail

need=()
command -v python3 >/dev/null || need+=(python3)
command -v curl >/dev/null || need+=(curl)

if [ ${#need[@]} -gt 0 ]; then
  echo "testbed: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
echo "testbed: ready"
