#!/usr/bin/env python3
"""Convergence benchmark (not a test): time from applying a one-file change (REST) to every targeted agent
reporting it converged (status polled every 2 ms), for 1 agent and for N real agents on loopback.
Usage: scripts/bench-converge.py [N] (default 20)."""
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

from benchlib import Cluster

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20
ROUNDS = 20


def main():
    # Every agent may write under the shared files dir; on this one machine they manage the same path.
    with Cluster(N, lambda i, work: ["--label", f"idx={i}", "--allow-path", os.path.join(work, "files")]) as c:
        files = os.path.join(c.work, "files")
        os.makedirs(files, exist_ok=True)
        api = c.cli[c.cli.index("--server") + 1]
        token = open(os.path.join(c.work, "data", "admin.token")).read().strip()

        def post(manifest):
            req = urllib.request.Request(api + "/api/v1/manifests", data=json.dumps(manifest).encode(), method="POST",
                                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            with urllib.request.urlopen(req) as r:
                return json.load(r)

        def converged(nodes, generation_floor):
            req = urllib.request.Request(api + "/api/v1/status", headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req) as r:
                status = json.load(r)
            mine = [s for s in status if s["node_name"] in nodes]
            return len(mine) == len(nodes) and all(
                s["observed_generation"] == s["desired_generation"] >= generation_floor.get(s["node_name"], 0)
                and all(x["state"] == "Ready" for x in s["resources"]) for s in mine)

        def measure(name, selector):
            """Apply through the API, then poll status every 2 ms until every targeted node converged."""
            times = []
            for r in range(ROUNDS):
                res = [{"id": name, "file": {"path": os.path.join(files, name), "content": f"round {r}\n"}}]
                req = urllib.request.Request(api + "/api/v1/status", headers={"Authorization": f"Bearer {token}"})
                with urllib.request.urlopen(req) as resp:
                    before = {s["node_name"]: s["desired_generation"] + 1 for s in json.load(resp)}
                t = time.perf_counter()
                applied = post({"name": name, "selector": selector, "resources": res})
                while not converged(applied["nodes"], before):
                    if time.perf_counter() - t > 60:
                        sys.exit(f"{name}: not converged within 60 s")
                    time.sleep(0.002)
                times.append((time.perf_counter() - t) * 1000)
            times.sort()
            return statistics.median(times), times[-1]

        med, worst = measure("one", {"idx": "0"})
        print(f"apply -> converged, 1 agent, {ROUNDS} rounds: median {med:.0f} ms, max {worst:.0f} ms")
        med, worst = measure("all", {})
        print(f"apply -> converged, {N} agents, {ROUNDS} rounds: median {med:.0f} ms, max {worst:.0f} ms")


if __name__ == "__main__":
    main()
