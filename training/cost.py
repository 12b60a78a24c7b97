"""What a stage costs: CPU and wall-clock seconds, carried over its stops and resumes.

Training keeps a ``StageCost`` in its checkpoint and logs it with every train record; corpus
rendering writes one into ``corpus.json``. So a run that resumes another day, on another machine,
still says what the whole stage took.
"""

from __future__ import annotations

import resource
import time
from typing import Optional


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its ended children. Children count once they
    have ended: training's data workers end with each epoch's loader, a rendering pool at its close."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class StageCost:
    """Seconds spent before this start (from a checkpoint or an earlier summary) plus this start's."""

    def __init__(self, before: Optional[dict] = None) -> None:
        self.load(before or {})
        self._cpu0, self._wall0 = cpu_seconds(), time.time()

    def load(self, spent: dict) -> None:
        self.before = {k: float(spent.get(k, 0.0)) for k in ("cpu_s", "wall_s")}

    def cpu_since_start(self) -> float:
        return cpu_seconds() - self._cpu0

    def total(self, cpu_since_start: Optional[float] = None) -> dict[str, float]:
        """``cpu_since_start``: this start's CPU when it is more than this process's (a distributed
        run passes the sum over its processes)."""
        cpu = self.cpu_since_start() if cpu_since_start is None else cpu_since_start
        return {"cpu_s": round(self.before["cpu_s"] + cpu, 1),
                "wall_s": round(self.before["wall_s"] + time.time() - self._wall0, 1)}
