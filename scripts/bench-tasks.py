#!/usr/bin/env python3
"""Task benchmark (not a test): exec round-trip latency, output throughput agent -> server -> CLI, and
fan-out time over N real agents on loopback. Usage: scripts/bench-tasks.py [AGENTS] (default 20)."""
import statistics
import subprocess
import sys
import time

from benchlib import Cluster

AGENTS = int(sys.argv[1]) if len(sys.argv) > 1 else 20


def main():
    with Cluster(AGENTS, lambda i, work: ["--allow-shell", "--heartbeat-interval", "10s"]) as c:
        lat = []
        for _ in range(100):
            t = time.perf_counter()
            subprocess.run(c.cli + ["exec", "n0", "--", "true"], check=True, env=c.env)
            lat.append((time.perf_counter() - t) * 1000)
        lat.sort()
        print(f"exec round trip (drover exec NODE -- true, CLI start included), 100 runs: "
              f"median {statistics.median(lat):.1f} ms, p99 {lat[98]:.1f} ms")

        size = 50_000_000
        t = time.perf_counter()
        out = subprocess.run(c.cli + ["exec", "n0", "--shell", f"head -c {size // 4 * 3} /dev/zero | base64 -w 76"],
                             stdout=subprocess.PIPE, check=True, env=c.env).stdout
        dt = time.perf_counter() - t
        print(f"output throughput agent -> server -> CLI: {len(out) / dt / 1e6:.1f} MB/s ({len(out) / 1e6:.0f} MB in {dt:.2f} s, 77-byte lines)")

        fan = []
        for _ in range(10):
            t = time.perf_counter()
            subprocess.run(c.cli + ["exec", "--all", "--", "true"], check=True, env=c.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            fan.append((time.perf_counter() - t) * 1000)
        fan.sort()
        print(f"fan-out of `true` over {AGENTS} agents, 10 runs: median {statistics.median(fan):.0f} ms, max {fan[-1]:.0f} ms")


if __name__ == "__main__":
    main()
