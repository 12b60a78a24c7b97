"""A real local Ray cluster for tests and benchmarks, in a network namespace of its own.

Ray replaces ``--node-ip-address 127.0.0.1`` by the host's address and listens on every
interface, so the cluster runs in a fresh network namespace (``unshare --net``, loopback up),
where loopback is the only address and no port collides with another Ray on the machine.
Commands join it with ``nsenter --net``; token authentication is off (only the namespace
reaches it). Stopping kills the processes of that namespace by PID
(``ray stop`` would stop every Ray on the machine). Needs root (or CAP_SYS_ADMIN), ``unshare``,
``nsenter`` and ``ip``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).with_name("ray")
PORT = 6379                                 # inside the namespace: nothing else listens there
OBJECT_STORE = 100 * 1024 * 1024            # bytes per node (Ray's minimum is 75 MiB)


def available() -> Optional[str]:
    """None when a namespaced cluster can start here, else why not."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        return "ray[data] is not installed (pip install 'w2v[ray]')"
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"cannot make a network namespace (unshare --net: {probe.stderr.decode().strip()})"
    return None


class LocalCluster:
    """A head and ``len(node_cpus) - 1`` more nodes on 127.0.0.1, each with its CPU count."""

    def __init__(self, node_cpus: Sequence[int] = (2, 2), object_store: int = OBJECT_STORE):
        self.node_cpus = tuple(node_cpus)
        self.object_store = object_store
        self.temp = Path(tempfile.mkdtemp(prefix="w2vray-", dir="/tmp"))   # short: Ray's socket paths
        self.holder: Optional[subprocess.Popen] = None
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                    "RAY_USAGE_STATS_ENABLED": "0", "W2V_NO_PROGRESS": os.environ.get("W2V_NO_PROGRESS", ""),
                    # Nothing outside the namespace reaches it: no token (one in ~/.ray would be shared).
                    "RAY_AUTH_MODE": "disabled"}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{PORT}"

    def start(self) -> "LocalCluster":
        self.holder = subprocess.Popen(["unshare", "--net", "sh", "-c", "ip link set lo up && exec sleep 86400"])
        deadline = time.monotonic() + 10
        while "UP" not in self.run(["ip", "-o", "link", "show", "lo"], capture_output=True, text=True).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError("loopback did not come up in the new network namespace")
            time.sleep(0.05)
        common = ["--node-ip-address", "127.0.0.1", "--object-store-memory", str(self.object_store),
                  "--disable-usage-stats"]
        self._ray(["start", "--head", "--port", str(PORT), "--num-cpus", str(self.node_cpus[0]),
                   "--include-dashboard", "false", "--temp-dir", str(self.temp), *common])
        for cpus in self.node_cpus[1:]:
            self._ray(["start", "--address", self.address, "--num-cpus", str(cpus), *common])
        return self

    def _ray(self, args: list[str]) -> None:
        r = self.run([str(RAY), *args], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray {' '.join(args[:2])} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the cluster's network namespace."""
        assert self.holder is not None
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", *argv]

    def run(self, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(argv), env=self.env, **kwargs)

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.command(argv), env=self.env, **kwargs)

    def pids(self) -> list[int]:
        """Every process in the namespace but the holder (Ray's daemons and workers, drivers)."""
        if self.holder is None:
            return []
        try:
            ns = os.readlink(f"/proc/{self.holder.pid}/ns/net")
        except OSError:
            return []
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != self.holder.pid:
                try:
                    if os.readlink(f"/proc/{entry}/ns/net") == ns:
                        out.append(int(entry))
                except OSError:
                    pass
        return out

    def find(self, text: str) -> list[int]:
        """PIDs in the namespace whose command line contains ``text`` (Ray names its workers
        after what they run: ``ray::MapWorker(MapBatches(AcousticModel))``)."""
        out = []
        for pid in self.pids():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                out.append(pid)
        return out

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, to the namespace's processes by PID; then the holder."""
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.1)
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()
            self.holder = None
        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
