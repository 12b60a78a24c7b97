"""The models one server serves, picked per request by name or language code.

A ``ModelRegistry`` holds one entry per served model (a name, its model directory, the language
code and sample rate from its model card) and a loader that turns an entry into a ``Backend``.
Every protocol front-end (w2v.v1, Riva, HTTP) resolves a request's model with ``resolve`` and
runs it inside ``lease``:

    name = registry.resolve(config.model or None, config.language_code or None)
    async with registry.lease(name) as backend:
        ...  # backend.open_stream(...) / backend.recognize(...)

Loading: the default model loads when the registry starts (a broken default fails at start-up)
and stays loaded; the others load on first use (in a worker thread, so the event loop keeps
serving) and unload after ``idle_unload_s`` without a lease. A lease is reference-counted: a model
never unloads while a stream or request holds it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable, Optional, Sequence

from w2v_serve.model_dir import CARD_NAME, ModelDirectory
from w2v_serve.service.backends import Backend
from w2v_serve.service.errors import ServiceError, invalid_argument, unavailable

log = logging.getLogger("w2v.serve")

DEFAULT_LANGUAGE = "en-US"      # a card that names no language: the project's models are English
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ModelSpecError(ValueError):
    """A --model value that names no usable model directory, or a duplicate name."""


@dataclass(frozen=True)
class ModelEntry:
    """One served model: what a client may ask for, and where it comes from."""

    name: str
    path: Optional[Path]             # the model directory (None: a backend given ready-made)
    language_code: str = DEFAULT_LANGUAGE
    sample_rate: int = 16000

    @staticmethod
    def from_directory(path: str | Path, name: Optional[str] = None) -> "ModelEntry":
        """An entry for a model directory; name and language code from its card unless given."""
        model = ModelDirectory.load(path)
        card = model.card
        name = name or card.name or Path(path).resolve().name
        if not NAME_PATTERN.fullmatch(name):
            raise ModelSpecError(f"model name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        return ModelEntry(name, Path(path), card.language_code or DEFAULT_LANGUAGE, card.sample_rate)


def parse_model_specs(values: Sequence[str]) -> list[ModelEntry]:
    """``--model`` values -> entries, in order: ``NAME=DIR``, a model directory (named from its
    card, else from the directory), or a folder whose subdirectories are model directories (each
    named the same way). Names must be unique."""
    entries: list[ModelEntry] = []
    for value in values:
        name, path = None, Path(value)
        if not path.is_dir() and "=" in value:
            name, _, rest = value.partition("=")
            path = Path(rest)
            if not NAME_PATTERN.fullmatch(name):
                raise ModelSpecError(f"--model {value}: model name {name!r}: use letters, digits, '.', '_' "
                                     "or '-' (at most 64)")
        if not path.is_dir():
            raise ModelSpecError(f"--model {value}: {path} is not a directory")
        if (path / CARD_NAME).exists():
            entries.append(ModelEntry.from_directory(path, name))
            continue
        subdirs = sorted(p for p in path.iterdir() if (p / CARD_NAME).exists())
        if not subdirs:
            raise ModelSpecError(f"--model {value}: {path} holds no {CARD_NAME}, nor do its subdirectories "
                                 "(a model directory is what `w2v export CKPT --out DIR` writes)")
        if name is not None:
            raise ModelSpecError(f"--model {value}: NAME=DIR names one model directory, and {path} is a folder "
                                 f"of {len(subdirs)}")
        entries.extend(ModelEntry.from_directory(p) for p in subdirs)
    seen: dict[str, ModelEntry] = {}
    for e in entries:
        if e.name in seen:
            raise ModelSpecError(f"two models are named {e.name!r} ({seen[e.name].path} and {e.path}); "
                                 "name them with --model NAME=DIR")
        seen[e.name] = e
    return entries


@dataclass(frozen=True)
class ModelInfo:
    """What ``describe`` says of one model (the Riva and HTTP model lists are made from it)."""

    name: str
    language_code: str
    sample_rate: int
    streaming: bool
    offline: bool
    default: bool
    loaded: bool


class _Slot:
    def __init__(self, entry: ModelEntry) -> None:
        self.entry = entry
        self.backend: Optional[Backend] = None
        self.users = 0
        self.last_used = time.monotonic()
        self.load_lock = threading.Lock()     # one load at a time; a second lessee waits for it


class ModelRegistry:
    """The served models, their loading, reference counts and idle unloading (thread-safe)."""

    def __init__(self, entries: Sequence[ModelEntry], loader: Callable[[ModelEntry], Backend], *,
                 default: Optional[str] = None, idle_unload_s: float = 600.0, kind: str = "embedded") -> None:
        if not entries:
            raise ModelSpecError("no model to serve")
        self._slots = {e.name: _Slot(e) for e in entries}
        if len(self._slots) != len(entries):
            raise ModelSpecError("model names must be unique")
        self.default_name = default or entries[0].name
        if self.default_name not in self._slots:
            raise ModelSpecError(f"default model {self.default_name!r} is not served ({', '.join(self._slots)})")
        self.idle_unload_s = idle_unload_s
        self.kind = kind                  # the backend kind: "embedded" or "triton"
        self._loader = loader
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def of_backend(cls, backend: Backend, name: str = "default",
                   language_code: str = DEFAULT_LANGUAGE) -> "ModelRegistry":
        """One ready backend served under ``name`` (never unloaded)."""
        entry = ModelEntry(name, None, language_code, backend.sample_rate)
        registry = cls([entry], lambda e: backend, kind=backend.name)
        registry._slots[name].backend = backend
        return registry

    # ------------------------------------------------------------------ what is served
    def names(self) -> list[str]:
        return list(self._slots)

    def entry(self, name: str) -> ModelEntry:
        return self._slots[name].entry

    def describe(self) -> list[ModelInfo]:
        """Every served model: name, language code, sample rate, modes, default, loaded now."""
        return [ModelInfo(s.entry.name, s.entry.language_code, s.entry.sample_rate, True, True,
                          s.entry.name == self.default_name, s.backend is not None) for s in self._slots.values()]

    def served(self) -> str:
        """The served models as a client reads them in an error message."""
        return ", ".join(f"{s.entry.name} ({s.entry.language_code})" for s in self._slots.values())

    def resolve(self, name: Optional[str] = None, language_code: Optional[str] = None) -> str:
        """The model a request asks for. ``name`` (exact) wins; else ``language_code`` picks the
        default model when it speaks that language, else the first model that does (the code's
        case is ignored, and a bare language such as ``en`` matches ``en-US``); neither: the
        default. Anything not served: INVALID_ARGUMENT naming what is."""
        if name:
            if name not in self._slots:
                raise invalid_argument(f"model {name!r} is not served here; served: {self.served()}")
            entry = self._slots[name].entry
            if language_code and not _language_matches(language_code, entry.language_code):
                raise invalid_argument(f"model {name!r} is {entry.language_code}, not {language_code}; "
                                       f"served: {self.served()}")
            return name
        if not language_code:
            return self.default_name
        candidates = [self.default_name] + [n for n in self._slots if n != self.default_name]
        for exact in (True, False):
            for n in candidates:
                if _language_matches(language_code, self._slots[n].entry.language_code, exact):
                    return n
        raise invalid_argument(f"no model for language {language_code!r}; served: {self.served()}")

    # ------------------------------------------------------------------ loading and leases
    def start(self) -> None:
        """Load the default model now (its errors surface at start-up)."""
        self._load(self._slots[self.default_name])

    def _load(self, slot: _Slot) -> Backend:
        with slot.load_lock:
            if self._closed:
                raise unavailable("the server is shutting down")
            if slot.backend is None:
                started = time.monotonic()
                slot.backend = self._loader(slot.entry)
                log.info("model %s loaded in %.1f s", slot.entry.name, time.monotonic() - started)
            return slot.backend

    @asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[Backend]:
        """The model's backend, loaded if it is not, held (not unloaded) until the block ends."""
        slot = self._slots[name]
        with self._lock:
            slot.users += 1
        try:
            backend = slot.backend
            if backend is None:
                try:
                    backend = await asyncio.get_running_loop().run_in_executor(None, self._load, slot)
                except ServiceError:
                    raise
                except Exception as e:  # the next request tries again
                    log.warning("model %s could not be loaded: %s", name, e)
                    raise unavailable(f"model {name!r} could not be loaded: {e}") from e
            yield backend
        finally:
            with self._lock:
                slot.users -= 1
                slot.last_used = time.monotonic()

    def unload_idle(self, now: Optional[float] = None) -> list[str]:
        """Unload every model but the default that no lease holds and none used for
        ``idle_unload_s`` (0: never); the names unloaded."""
        if self.idle_unload_s <= 0:
            return []
        now = time.monotonic() if now is None else now
        gone = []
        for slot in self._slots.values():
            with self._lock:
                idle = (slot.entry.name != self.default_name and slot.entry.path is not None and slot.users == 0
                        and slot.backend is not None and now - slot.last_used >= self.idle_unload_s)
                backend = slot.backend if idle else None
                if idle:
                    slot.backend = None
            if backend is not None:
                backend.close()
                gone.append(slot.entry.name)
                log.info("model %s unloaded after %g s idle", slot.entry.name, self.idle_unload_s)
        return gone

    async def unload_idle_forever(self, interval_s: Optional[float] = None) -> None:
        """``unload_idle`` every ``interval_s`` (default: a tenth of the idle time, 1..30 s)."""
        if self.idle_unload_s <= 0:
            return
        interval = interval_s or min(30.0, max(1.0, self.idle_unload_s / 10))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            await loop.run_in_executor(None, self.unload_idle)

    # ------------------------------------------------------------------ the Backend-wide view
    def backend(self, name: str) -> Optional[Backend]:
        """The model's backend when it is loaded (no lease: for status and metrics only)."""
        return self._slots[name].backend

    def loaded(self) -> list[Backend]:
        return [s.backend for s in self._slots.values() if s.backend is not None]

    @property
    def active_streams(self) -> int:
        return sum(b.active_streams for b in self.loaded())

    def healthy(self) -> bool:
        return all(b.healthy() for b in self.loaded())

    def close(self) -> None:
        with self._lock:
            self._closed = True
        for slot in self._slots.values():
            with slot.load_lock:
                backend, slot.backend = slot.backend, None
            if backend is not None:
                backend.close()


def _language_matches(asked: str, served: str, exact: bool = False) -> bool:
    a, s = asked.strip().lower().replace("_", "-"), served.strip().lower().replace("_", "-")
    if a == s:
        return True
    return not exact and a.split("-")[0] == s.split("-")[0]
