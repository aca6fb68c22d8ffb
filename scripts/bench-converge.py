#!/usr/bin/env python3
"""Convergence benchmark (not a test): time from `drover apply --wait` of a one-file change to every
targeted agent reporting it converged, for 1 agent and for N real agents on loopback.
Usage: scripts/bench-converge.py [N] (default 20)."""
import json
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
N = int(sys.argv[1]) if len(sys.argv) > 1 else 20
ROUNDS = 20


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
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROVER_")}
    procs = []
    try:
        api, grpc = port(), port()
        empty = os.path.join(work, "empty.toml")
        open(empty, "w").close()
        data = os.path.join(work, "data")
        procs.append(subprocess.Popen([drover, "--data-dir", data, "server", "--config", empty, "--listen", f"127.0.0.1:{api}",
                                       "--agent-listen", f"127.0.0.1:{grpc}"], stderr=open(os.path.join(work, "server.log"), "w"), env=env))
        cli = [drover, "--server", f"http://127.0.0.1:{api}", "--data-dir", data]
        for _ in range(100):
            if subprocess.run(["curl", "-fs", f"http://127.0.0.1:{api}/health"], stdout=subprocess.DEVNULL).returncode == 0:
                break
            time.sleep(0.1)
        token = subprocess.run(cli + ["token", "create"], capture_output=True, text=True, check=True, env=env).stdout.strip()
        files = os.path.join(work, "files")
        os.makedirs(files)
        for i in range(N):
            procs.append(subprocess.Popen([agent_bin, "--server", f"https://127.0.0.1:{grpc}", "--token", token, "--name", f"n{i}",
                                           "--label", f"idx={i}", "--allow-path", files,
                                           "--state-dir", os.path.join(work, f"a{i}"), "--config", empty],
                                          stderr=open(os.path.join(work, f"agent{i}.log"), "w"), env=env))
        deadline = time.time() + 60
        while time.time() < deadline:
            out = subprocess.run(cli + ["nodes", "-o", "json"], capture_output=True, text=True, env=env).stdout
            if out.count('"connected": true') >= N:
                break
            time.sleep(0.2)
        else:
            sys.exit("agents did not all connect")

        def measure(name, selector):
            times = []
            manifest = os.path.join(work, f"{name}.json")
            for r in range(ROUNDS):
                # One file per manifest; on this one machine all agents manage the same path.
                res = [{"id": name, "file": {"path": os.path.join(files, name), "content": f"round {r}\n"}}]
                with open(manifest, "w") as fh:
                    json.dump({"name": name, "selector": selector, "resources": res}, fh)
                t = time.perf_counter()
                done = subprocess.run(cli + ["apply", "-f", manifest, "--wait", "--timeout", "60s"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                if done.returncode != 0:
                    sys.exit(f"apply --wait failed:\n{done.stderr}")
                times.append((time.perf_counter() - t) * 1000)
            times.sort()
            return statistics.median(times), times[-1]

        med, worst = measure("one", {"idx": "0"})
        print(f"apply -> converged, 1 agent, {ROUNDS} rounds: median {med:.0f} ms, max {worst:.0f} ms")
        med, worst = measure("all", {})
        print(f"apply -> converged, {N} agents, {ROUNDS} rounds: median {med:.0f} ms, max {worst:.0f} ms")
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
