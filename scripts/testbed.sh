#!/usr/bin/env bash
# Installs and prepares what drover's tests need on a fresh Debian machine (see ../shared/TESTBED.md):
# python3 and curl; Chromium (headless, for the dashboard test); Podman with runc and a local busybox image (no registry is reachable);
# PostgreSQL's server binaries (the store's tests start their own throwaway clusters); nats-server (the replica tests
# start their own).
# Idempotent: installs only what is missing. Needs root (or sudo) when something is missing.
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need=()
command -v python3 >/dev/null || need+=(python3)
command -v curl >/dev/null || need+=(curl)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
[ -x /bin/busybox ] || need+=(busybox-static)
# Headless Chromium for the dashboard test (crates/drover-testkit/tests/dashboard.rs).
command -v chromium >/dev/null || need+=(chromium)
# PostgreSQL for the store's tests (crates/drover-server store::conformance, crates/drover-testkit/tests/postgres.rs):
# they run initdb and pg_ctl from /usr/lib/postgresql/*/bin themselves, so no cluster is made at install.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need+=(postgresql)
  $SUDO mkdir -p /etc/postgresql-common
  grep -qs '^create_main_cluster = false' /etc/postgresql-common/createcluster.conf ||
    echo 'create_main_cluster = false' | $SUDO tee -a /etc/postgresql-common/createcluster.conf >/dev/null
fi
# nats-server for the replica tests (crates/drover-testkit/tests/replicas.rs): they start their own on a free port;
# the package's systemd unit does not run here (no systemd as PID 1).
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
# ip (iproute2) makes the network namespaces of the token test (crates/drover-testkit/tests/cli_tokens.rs).
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || need+=(iproute2)
# promtool (Debian's prometheus package) lints the server's /metrics (crates/drover-testkit/tests/metrics.rs).
command -v promtool >/dev/null || need+=(prometheus)

if [ ${#need[@]} -gt 0 ]; then
  echo "testbed: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

# crun fails on hybrid cgroups and podman's default rlimits are refused in this sandbox: use runc and cgroupfs.
conf=/etc/containers/containers.conf
if ! grep -q 'runtime = "runc"' "$conf" 2>/dev/null; then
  echo "testbed: writing $conf"
  $SUDO mkdir -p /etc/containers
  $SUDO tee "$conf" >/dev/null <<CONF
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
fi

# A busybox image built locally from Debian's static busybox.
if ! $SUDO podman image exists localhost/busybox:latest; then
  echo "testbed: importing localhost/busybox:latest"
  root=$(mktemp -d)
  mkdir -p "$root/bin"
  cp /bin/busybox "$root/bin/"
  for c in sh sleep echo cat httpd ls; do ln -s busybox "$root/bin/$c"; done
  tar -C "$root" -c . | $SUDO podman import - localhost/busybox:latest >/dev/null
  rm -rf "$root"
fi
# A real systemd to test SystemdUnit resources against: a minimal Debian with systemd, as an image.
if ! $SUDO podman image exists localhost/debian-systemd:latest; then
  echo "testbed: building localhost/debian-systemd:latest (debootstrap, about a minute)"
  root=$(mktemp -d)
  $SUDO debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm "$root" >/dev/null
  tar -C "$root" -c . | $SUDO podman import --change 'CMD ["/sbin/init"]' - localhost/debian-systemd:latest >/dev/null
  $SUDO rm -rf "$root"
fi
echo "testbed: ready"
