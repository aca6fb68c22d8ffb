#!/usr/bin/env python3
"""Task benchmark (not a test): exec round-trip latency, output throughput agent -> server -> CLI, and
fan-out time over N real agents on loopback. Usage: scripts/bench-tasks.py [AGENTS] (default 20)."""
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
AGENTS = int(sys.argv[1]) if len(sys.argv) > 1 else 20


def port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def main():
    for pkg in ("drover-agent", "drover"):
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", pkg], cwd=ROOT, check=True, stdout=sys.stderr)
    drover = os.path.join(TARGET, "release", "drover")
    agent_bin = os.path.join(TARGET, "release", "drover-agent")
    work = tempfile.mkdtemp()
    procs = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROVER_")}
    try:
        api, grpc = port(), port()
        empty = os.path.join(work, "empty.toml")
        open(empty, "w").close()
        data = os.path.join(work, "data")
        log = open(os.path.join(work, "server.log"), "w")
        procs.append(subprocess.Popen([drover, "--data-dir", data, "server", "--config", empty, "--listen", f"127.0.0.1:{api}",
                                       "--agent-listen", f"127.0.0.1:{grpc}"], stderr=log, env=env))
        cli = [drover, "--server", f"http://127.0.0.1:{api}", "--data-dir", data]
        for _ in range(100):
            if subprocess.run(["curl", "-fs", f"http://127.0.0.1:{api}/health"], stdout=subprocess.DEVNULL).returncode == 0:
                break
            time.sleep(0.1)
        token = subprocess.run(cli + ["token", "create"], capture_output=True, text=True, check=True, env=env).stdout.strip()
        for i in range(AGENTS):
            alog = open(os.path.join(work, f"agent{i}.log"), "w")
            procs.append(subprocess.Popen([agent_bin, "--server", f"https://127.0.0.1:{grpc}", "--token", token, "--name", f"n{i}",
                                           "--state-dir", os.path.join(work, f"a{i}"), "--config", empty, "--allow-shell",
                                           "--heartbeat-interval", "10s"], stderr=alog, env=env))
        deadline = time.time() + 60
        while time.time() < deadline:
            out = subprocess.run(cli + ["nodes", "-o", "json"], capture_output=True, text=True, env=env).stdout
            if out.count('"connected": true') >= AGENTS:
                break
            time.sleep(0.2)
        else:
            sys.exit("agents did not all connect")

        lat = []
        for _ in range(100):
            t = time.perf_counter()
            subprocess.run(cli + ["exec", "n0", "--", "true"], check=True, env=env)
            lat.append((time.perf_counter() - t) * 1000)
        lat.sort()
        print(f"exec round trip (drover exec NODE -- true, CLI start included), 100 runs: "
              f"median {statistics.median(lat):.1f} ms, p99 {lat[98]:.1f} ms")

        size = 50_000_000
        t = time.perf_counter()
        out = subprocess.run(cli + ["exec", "n0", "--shell", f"head -c {size // 4 * 3} /dev/zero | base64 -w 76"],
                             stdout=subprocess.PIPE, check=True, env=env).stdout
        dt = time.perf_counter() - t
        print(f"output throughput agent -> server -> CLI: {len(out) / dt / 1e6:.1f} MB/s ({len(out) / 1e6:.0f} MB in {dt:.2f} s, 77-byte lines)")

        fan = []
        for _ in range(10):
            t = time.perf_counter()
            subprocess.run(cli + ["exec", "--all", "--", "true"], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            fan.append((time.perf_counter() - t) * 1000)
        fan.sort()
        print(f"fan-out of `true` over {AGENTS} agents, 10 runs: median {statistics.median(fan):.0f} ms, max {fan[-1]:.0f} ms")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
