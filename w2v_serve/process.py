"""Processes and memory: children that die with their parent, and memory handed back.

* ``die_with_parent()`` (Linux): the calling process gets SIGKILL when the thread that created it
  ends, whatever ends it (SIGKILL included), via ``prctl(PR_SET_PDEATHSIG)``. Children started
  with ``child_preexec`` (a ``subprocess.Popen(preexec_fn=...)``) or whose pool initializer
  calls it cannot outlive the process that started them. ``parent_pid`` closes the race where
  the parent died before the call.
* ``exit_with_parent()``: for Python children (pool workers), a watcher thread that ends the
  process when its parent *process* is gone (the death signal follows the creating thread,
  which in a pool may be any thread).
* ``release_memory()``: glibc keeps freed heap memory in its arenas; after a burst of large
  buffers (many streams, long chunks) ``malloc_trim`` hands the free pages back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from typing import Callable, Optional

_PR_SET_PDEATHSIG = 1
_libc: Optional[ctypes.CDLL] = None


def _c() -> Optional[ctypes.CDLL]:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            return None
    return _libc


def die_with_parent(parent_pid: Optional[int] = None, sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent ends; True when set.
    With ``parent_pid``: if that parent is already gone, exit now."""
    libc = _c()
    if libc is None:
        return False
    ok = libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)            # the parent died before the request took effect
    return ok


def child_preexec(parent_pid: Optional[int] = None, new_session: bool = True) -> Callable[[], None]:
    """A ``preexec_fn`` for subprocess.Popen: the child dies with this process (and, with
    ``new_session``, leads a process group of its own, so its own children can be killed with it)."""
    parent = os.getpid() if parent_pid is None else parent_pid

    def preexec() -> None:
        if new_session:
            os.setsid()
        die_with_parent(parent)

    return preexec


def exit_with_parent(parent_pid: int, interval_s: float = 0.5) -> None:
    """End this process (exit status 1) soon after ``parent_pid`` stops being its parent."""
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, name="w2v-parent-watch", daemon=True).start()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_memory() -> None:
    """Return the heap's free pages to the system (glibc ``malloc_trim``); elsewhere nothing."""
    libc = _c()
    if libc is not None:
        try:
            libc.malloc_trim(0)
        except AttributeError:   # not glibc
            pass
