"""Start and stop a real ``tritonserver`` on a model repository (``w2v triton``).

Where the binary comes from, in order: ``--tritonserver PATH``, ``$W2V_TRITONSERVER``, the
``nvidia-pytriton`` wheel (which ships tritonserver 2.51 with the Python backend and one backend
stub per Python version), ``tritonserver`` on PATH (NVIDIA's image: /opt/tritonserver/bin).

With the wheel's server, the Python backend is assembled in a cache folder (backend library,
utilities, and the stub built for *this* Python), and the server's environment gets this
Python's ``lib`` folder and the wheel's bundled libraries on ``LD_LIBRARY_PATH``, this
environment's ``bin`` on ``PATH`` and its ``site-packages`` (plus the project) on
``PYTHONPATH``, so the Python models import numpy, onnxruntime and w2v_serve from here.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from w2v_serve.process import child_preexec, pid_alive

log = logging.getLogger("w2v.triton")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
RESTART_DELAY_S, MAX_RESTART_DELAY_S, STABLE_RUN_S = 1.0, 30.0, 60.0
START_ATTEMPTS = 3
# sh -c KEEPER tritonserver ARGS... with the lifeline pipe on stdin (see TritonServer._spawn).
_KEEPER = 'exec 3<&0 0</dev/null; (read _ <&3; kill -9 0) & exec "$0" "$@" 3<&-'

DEFAULT_REPOSITORY = PROJECT_ROOT / "model_repository"


class TritonError(RuntimeError):
    """The server could not be found, started, or did not become ready."""


class TritonExited(TritonError):
    """The server process ended before it became ready."""


@dataclass
class TritonInstallation:
    binary: Path
    backend_dir: Optional[Path]          # None: the binary's own default (NVIDIA's image)
    env: dict[str, str] = field(default_factory=dict)


def _pytriton_root() -> Optional[Path]:
    try:
        import importlib.util

        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    return root if (root / "bin" / "tritonserver").exists() else None


def _python_backend_from_wheel(root: Path) -> Path:
    """backends/python/ with the stub for this Python version, assembled once per version."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonError(f"the nvidia-pytriton wheel has no Python backend stub for Python {version}")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "w2v" / "triton_backends" / version
    target = cache / "python"
    sources = [p for p in (root / "backends" / "python").iterdir() if p.is_file()] + [stub]
    if not all((target / p.name).exists() and (target / p.name).stat().st_size == p.stat().st_size for p in sources):
        target.mkdir(parents=True, exist_ok=True)
        for p in sources:  # copy then rename: a concurrent start never sees a half-written stub
            part = target / (p.name + f".{os.getpid()}.part")
            shutil.copy2(p, part)
            os.replace(part, target / p.name)
    return cache


def locate_tritonserver(explicit: Optional[str] = None) -> TritonInstallation:
    explicit = explicit or os.environ.get("W2V_TRITONSERVER")
    if explicit:
        binary = Path(explicit)
        if not binary.exists():
            raise TritonError(f"{binary}: no such tritonserver binary")
        return TritonInstallation(binary, None, {})
    root = _pytriton_root()
    if root is not None:
        backend_dir = _python_backend_from_wheel(root)
        libs = [Path(sysconfig.get_config_var("LIBDIR") or Path(sys.base_prefix) / "lib"),
                root.parent.parent / "nvidia_pytriton.libs"]
        site = sysconfig.get_paths()["purelib"]
        env = {
            "LD_LIBRARY_PATH": os.pathsep.join([str(p) for p in libs] + [os.environ.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), site, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        }
        return TritonInstallation(root / "bin" / "tritonserver", backend_dir, env)
    found = shutil.which("tritonserver") or ("/opt/tritonserver/bin/tritonserver" if Path("/opt/tritonserver/bin/tritonserver").exists() else None)
    if found:
        return TritonInstallation(Path(found), None, {})
    raise TritonError("no tritonserver found: install the 'triton' extra (pip install 'w2v[triton]'), "
                      "use NVIDIA's tritonserver image, or pass --tritonserver PATH")


def check_repository(repository: Path) -> None:
    """Refuse a repository whose weights were never written (the committed one has none)."""
    if not repository.is_dir():
        raise TritonError(f"{repository}: no such model repository")
    acoustic = repository / "acoustic"
    if acoustic.is_dir() and not (acoustic / "1" / "model_card.json").exists():
        raise TritonError(f"{repository}: no model in acoustic/1/; write one with "
                          f"`w2v export CKPT --out DIR --repository {repository}`")


SCRATCH_PREFIX = "w2v-serve-repo-"


def scratch_repository() -> Path:
    """A new scratch directory for a repository written for one server, named after this
    process; scratch directories of processes that no longer run (killed before they could
    clean up) are removed first."""
    root = Path(tempfile.gettempdir())
    for old in root.glob(SCRATCH_PREFIX + "*"):
        try:
            pid = int(old.name[len(SCRATCH_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not pid_alive(pid) and old.is_dir() and not old.is_symlink():
            log.info("removing %s, left by process %d", old, pid)
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """A tritonserver process on a repository; a context manager that waits until ready and
    stops the server (SIGINT, then SIGKILL after a grace period) on exit. ``owns_repository``:
    the repository is a scratch copy written for this server; stopping removes it.

    The process leads a session of its own and gets SIGKILL when the process that started it
    dies (``prctl(PR_SET_PDEATHSIG)``). With ``start(supervise=True)`` a thread reaps it when it
    exits and starts it again with back-off (``running`` is False meanwhile)."""

    def __init__(self, repository: str | Path = DEFAULT_REPOSITORY, *, grpc_port: int = 8001,
                 http_port: int = 8000, metrics_port: int = 8002, host: str = "127.0.0.1",
                 tritonserver: Optional[str] = None, log_file: Optional[str | Path] = None,
                 extra_args: tuple[str, ...] = (), verbose: bool = False, owns_repository: bool = False) -> None:
        self.repository = Path(repository).resolve()
        self.owns_repository = owns_repository
        check_repository(self.repository)
        self.install = locate_tritonserver(tritonserver)
        self.host, self.grpc_port, self.http_port, self.metrics_port = host, grpc_port, http_port, metrics_port
        self.log_file = Path(log_file) if log_file else None
        self.extra_args = extra_args
        self.verbose = verbose
        self.process: Optional[subprocess.Popen] = None
        self.running = False                 # started and not known to have exited
        self.restarts = 0                    # restarts by the supervisor
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._supervisor: Optional[threading.Thread] = None
        self._started_at = 0.0
        self._ready_timeout_s = 120.0
        self._lifeline = None                # the write end of the group's lifeline pipe

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self) -> list[str]:
        cmd = [str(self.install.binary), f"--model-repository={self.repository}",
               f"--grpc-port={self.grpc_port}", f"--http-port={self.http_port}",
               f"--metrics-port={self.metrics_port}", f"--grpc-address={self.host}",
               f"--http-address={self.host}", "--exit-timeout-secs=10",
               "--log-verbose=1" if self.verbose else "--log-verbose=0"]
        if self.install.backend_dir is not None:
            cmd.append(f"--backend-directory={self.install.backend_dir}")
        return cmd + list(self.extra_args)

    def start(self, timeout_s: float = 120.0, supervise: bool = False, attempts: int = START_ATTEMPTS) -> "TritonServer":
        """Start the server and wait until it is ready; a server that exits while starting (a
        crash, or a port taken in the meantime) is started again, ``attempts`` tries in all, 1 s
        apart. ``supervise``: restart it whenever it exits until ``stop()`` (see ``running``,
        ``restarts``)."""
        self._stopping.clear()
        for attempt in range(1, attempts + 1):
            self._spawn()
            try:
                self.wait_ready(timeout_s)
                break
            except TritonExited as e:
                self._cut_lifeline()
                if attempt == attempts:
                    self.stop()
                    raise
                log.warning("%s; starting it again (try %d of %d)", e, attempt + 1, attempts)
                time.sleep(RESTART_DELAY_S)
            except BaseException:
                self.stop()
                raise
        self.running = True
        if supervise:
            self._ready_timeout_s = timeout_s
            self._supervisor = threading.Thread(target=self._supervise, name="w2v-tritonserver-supervisor",
                                                daemon=True)
            self._supervisor.start()
        return self

    def _spawn(self) -> None:
        env = {**os.environ, **self.install.env}
        if self.log_file is None:
            out = subprocess.DEVNULL
        elif str(self.log_file) == "-":
            out = None  # inherit: the server logs to our stdout
        else:
            out = open(self.log_file, "ab")
        # A process group of its own (terminal signals are ours to forward), which dies with this
        # process: a shell starts a watcher on a pipe (its stdin) whose only writer is this
        # process, then becomes tritonserver; when the pipe ends (this process exited, was
        # killed, or closed it) the watcher kills the whole group: tritonserver and its backend
        # stubs. tritonserver also gets SIGKILL from the kernel when its starting thread ends.
        self._cut_lifeline()
        try:
            self.process = subprocess.Popen(["/bin/sh", "-c", _KEEPER, *self.command()], env=env,
                                            stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True, preexec_fn=child_preexec(new_session=False))
        finally:
            if out not in (None, subprocess.DEVNULL):
                out.close()
        self._lifeline = self.process.stdin
        self._started_at = time.monotonic()

    def _cut_lifeline(self) -> None:
        """Close this end of the pipe: the group's watcher kills whatever is left of it."""
        if self._lifeline is not None:
            try:
                self._lifeline.close()
            except OSError:
                pass
            self._lifeline = None

    def _supervise(self) -> None:
        """Reap the server when it exits and start it again, waiting 1, 2, 4 ... 30 s between
        tries (back to 1 s once a run lasted a minute)."""
        delay = RESTART_DELAY_S
        while not self._stopping.is_set():
            code = self.process.wait()            # reaps it: no zombie
            if self._stopping.is_set():
                return
            self._cut_lifeline()                  # its backend stubs go too
            self.running = False
            if time.monotonic() - self._started_at >= STABLE_RUN_S:
                delay = RESTART_DELAY_S
            log.warning("tritonserver exited (code %s); restarting in %.0f s", code, delay)
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, MAX_RESTART_DELAY_S)
            try:
                with self._lock:            # stop() either sees this process or prevents it
                    if self._stopping.is_set():
                        return
                    self._spawn()
                self.wait_ready(self._ready_timeout_s)
            except Exception as e:
                log.warning("tritonserver restart failed: %s", e)
                if self.process.poll() is None:
                    self._kill_group()
                continue
            self.restarts += 1
            self.running = True
            log.warning("tritonserver is back (restart %d)", self.restarts)

    def wait_ready(self, timeout_s: float) -> None:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.grpc_url)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise TritonExited(f"tritonserver exited with code {self.process.returncode} while starting"
                                  + (f"; see {self.log_file}" if self.log_file else ""))
            try:
                if client.is_server_ready():
                    return
            except Exception:
                pass
            time.sleep(0.3)
        raise TritonError(f"tritonserver not ready after {timeout_s:.0f} s"
                          + (f"; see {self.log_file}" if self.log_file else ""))

    def stop(self, grace_s: float = 15.0) -> Optional[int]:
        with self._lock:
            self._stopping.set()
        self.running = False
        try:
            return self._stop_process(grace_s)
        finally:
            self._cut_lifeline()
            if self._supervisor is not None:
                self._supervisor.join(timeout=grace_s + 5)
                self._supervisor = None
            if self.owns_repository:
                shutil.rmtree(self.repository, ignore_errors=True)

    def _kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def _stop_process(self, grace_s: float) -> Optional[int]:
        p = self.process
        if p is None or p.poll() is not None:
            return None if p is None else p.returncode
        p.send_signal(signal.SIGINT)  # Triton drains in-flight requests on SIGINT/SIGTERM
        try:
            return p.wait(grace_s)
        except subprocess.TimeoutExpired:
            self._kill_group()
            return p.returncode

    def __enter__(self) -> "TritonServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
