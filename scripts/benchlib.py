"""Shared set-up for the Python benchmarks: release binaries, a server and N enrolled agents on loopback,
all stopped and cleaned up at the end."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))


def port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Cluster:
    """`with Cluster(n, agent_args) as c:` gives `c.cli` (the drover CLI argv) and `c.env`."""

    def __init__(self, agents, agent_args=lambda i, work: []):
        self.agents = agents
        self.agent_args = agent_args
        self.procs = []

    def __enter__(self):
        for pkg in ("drover-agent", "drover"):
            subprocess.run(["cargo", "build", "--release", "--locked", "-p", pkg], cwd=ROOT, check=True, stdout=sys.stderr)
        drover = os.path.join(TARGET, "release", "drover")
        agent_bin = os.path.join(TARGET, "release", "drover-agent")
        self.work = tempfile.mkdtemp()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DROVER_")}
        api, grpc = port(), port()
        empty = os.path.join(self.work, "empty.toml")
        open(empty, "w").close()
        data = os.path.join(self.work, "data")
        self._spawn([drover, "--data-dir", data, "server", "--config", empty, "--listen", f"127.0.0.1:{api}",
                     "--agent-listen", f"127.0.0.1:{grpc}"], "server.log")
        self.cli = [drover, "--server", f"http://127.0.0.1:{api}", "--data-dir", data]
        for _ in range(100):
            if subprocess.run(["curl", "-fs", f"http://127.0.0.1:{api}/health"], stdout=subprocess.DEVNULL).returncode == 0:
                break
            time.sleep(0.1)
        token = subprocess.run(self.cli + ["token", "create"], capture_output=True, text=True, check=True, env=self.env).stdout.strip()
        for i in range(self.agents):
            self._spawn([agent_bin, "--server", f"https://127.0.0.1:{grpc}", "--token", token, "--name", f"n{i}",
                         "--state-dir", os.path.join(self.work, f"a{i}"), "--config", empty] + self.agent_args(i, self.work),
                        f"agent{i}.log")
        deadline = time.time() + 60
        while time.time() < deadline:
            out = subprocess.run(self.cli + ["nodes", "-o", "json"], capture_output=True, text=True, env=self.env).stdout
            if out.count('"connected": true') >= self.agents:
                return self
            time.sleep(0.2)
        self.__exit__(None, None, None)
        sys.exit("agents did not all connect")

    def _spawn(self, argv, log):
        self.procs.append(subprocess.Popen(argv, stderr=open(os.path.join(self.work, log), "w"), env=self.env))

    def __exit__(self, *_):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.work, ignore_errors=True)
