"""Batch transcription on a Ray cluster: ``w2v transcribe --ray ADDRESS``.

A Ray Data pipeline, one per window of up to ``WINDOW_FILES`` inputs::

    paths -> load     CPU tasks: header probe, decode, resample (w2v_serve.audio, the one loader)
          -> model    actor pool: one ONNX Runtime engine (or one Triton client) per actor
          -> decode   CPU tasks: CTC beam search + LM, one decoder per worker process, built once
          -> driver   sharded JSON lines (and Parquet) under the output directory

Each input's JSON-lines object is the one single-host ``w2v transcribe --format jsonl`` prints
(``TranscriptionResult.to_json``), built from the same steps (``file_samples``, ``load_audio``,
``Engine.infer`` / ``stream_log_probs``, ``segments``, ``CTCDecoder.decode``). With ``--triton``
the server decodes: the actor's client returns the finished result and the decode stage passes it on.

Output directory::

    DIR/part-RUN-NNNNN.jsonl     one line per input: {"path", "text", "duration_s", "words"} or
                                 {"path", "error"}; a shard appears complete or not at all
                                 (written as .part-*.tmp, fsynced, renamed, folder fsynced)
    DIR/part-RUN-NNNNN.parquet   the same rows (--format parquet), committed before its .jsonl
    DIR/STEM.txt|.srt|.vtt       per input, with --format text|srt|vtt (as single-host)

Resume: at start the driver reads every ``part-*.jsonl`` and skips the inputs they hold (an
error row counts as done); leftover ``.part-*.tmp`` files of an interrupted run are removed.
Fault tolerance: a file that fails becomes an error row; a task whose worker dies runs again
(Ray's task retries); a killed actor is restarted and its batch runs again (``max_restarts``,
``max_task_retries``); the driver writes each input once whatever a retry repeats.

Every node needs this package (same version) and the model directory, LM and audio at the same
paths (a shared file system or an image); the driver alone writes the output directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from w2v_serve.audio import load_audio, stream_audio
from w2v_serve.decoding import CTCDecoder, DecoderOptions, Transcript
from w2v_serve.engine import EngineOptions
from w2v_serve.transcribe import (CHUNK_BATCHES, TranscriptionResult, error_text, file_samples, inference_error,
                                  segments)

log = logging.getLogger("w2v.batch_ray")

WINDOW_FILES = 20_000        # inputs per Ray Data pipeline (the listing is read window by window)
SHARD_ROWS = 1000            # rows per output shard at most
SHARD_SECONDS = 60.0         # a shard is committed at least this often while results arrive
LOAD_LIMIT_S = 600.0         # longer files are not loaded by the load stage: the actor streams them
LOCAL_OBJECT_STORE = 2 << 30     # --ray local: object store cap (Ray's default is 30% of the RAM)
ACTOR_START_TIMEOUT_S = 600  # the model actors must all be up within this (else the job fails)
ROW_BLOCK_BYTES = 64 << 10   # Ray Data's target block size here (rows are batches: each its own block)
ACTOR_TASK_RETRIES = 3       # a model batch whose actor died runs again on the restarted actor
SHARD_PREFIX = "part-"


class RayUnavailable(RuntimeError):
    """Ray (the ``ray`` extra) is not installed, or the cluster cannot be reached."""


class RayJobFailed(RuntimeError):
    """The pipeline stopped before the end; what it finished is in the output directory."""


def import_ray():
    """``ray`` and ``ray.data``, or RayUnavailable saying how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise RayUnavailable(f"--ray needs Ray Data, which is not installed ({e}); "
                             "install it with: pip install 'w2v[ray]'") from None
    return ray


@dataclass(frozen=True)
class RayJob:
    """What every stage needs; pickled to the workers (paths must exist on every node)."""

    model: Optional[str] = None                  # model directory (None with triton)
    decoder: Optional[DecoderOptions] = None     # None with triton (the server decodes)
    engine: EngineOptions = EngineOptions()
    triton: Optional[str] = None                 # HOST:PORT of a Triton server
    triton_options: dict = field(default_factory=dict)   # TritonTranscriber's decoder options


@dataclass
class RaySettings:
    """The driver's settings."""

    address: str                                 # HOST:PORT, auto or local
    output_dir: str
    parquet: bool = False
    actors: Optional[int] = None                 # default: one per node (CPU), one per GPU share
    num_gpus_per_actor: float = 0.0
    batch_size: int = 8
    window_files: int = WINDOW_FILES
    shard_rows: int = SHARD_ROWS
    shard_seconds: float = SHARD_SECONDS
    progress: bool = True


@dataclass
class RunSummary:
    done: int = 0                 # inputs transcribed (or failed) by this run
    failed: int = 0               # of which failed
    skipped: int = 0              # inputs already in the output directory
    skipped_failed: int = 0       # of which error rows
    audio_s: float = 0.0
    wall_s: float = 0.0
    per_node: dict = field(default_factory=dict)    # model actor's node id -> [files, audio seconds]

    @property
    def any_failed(self) -> bool:
        return bool(self.failed or self.skipped_failed)


# ---------------------------------------------------------------------------- stages (on workers)
# Rows between stages: {"chunk": int, "kind": str, "payload": bytes}, the payload a pickled list
# of items (this package's own values, from its own workers). A chunk is CHUNK_BATCHES * batch_size
# consecutive inputs, the unit single-host ``Transcriber.transcribe_iter`` plans batches over: the
# load stage plans the same batches (``BatchPlan.plan_batches`` on the header lengths), so each
# file runs in the batch it runs in single-host (a quantized model's numerics depend on the batch).
_PLANS: dict = {}
_DECODERS: dict = {}


def _cached(cache: dict, key, make):
    """One value per worker process and key (a model's card, plan or decoder loads once)."""
    k = pickle.dumps(key)
    if k not in cache:
        cache.clear()
        cache[k] = make()
    return cache[k]


def _plan(job: RayJob, cpu: bool):
    def make():
        from w2v_serve.engine import BatchPlan
        from w2v_serve.model_dir import ModelDirectory

        return BatchPlan(ModelDirectory.load(job.model).card, job.engine, cpu=cpu)

    return _cached(_PLANS, (job.model, job.engine, cpu), make)


def _text_column(values) -> np.ndarray:
    return np.array(list(values), dtype=object)


def _row_batch(rows: list[tuple[int, str, list]]) -> dict:
    return {"chunk": np.array([r[0] for r in rows], dtype=np.int64), "kind": _text_column(r[1] for r in rows),
            "payload": _text_column(pickle.dumps(r[2], protocol=5) for r in rows)}


def _rows(batch: dict) -> Iterator[tuple[int, str, list]]:
    for chunk, kind, payload in zip(batch["chunk"], batch["kind"], batch["payload"]):
        yield int(chunk), str(kind), pickle.loads(payload)


def load_stage(batch: dict, job: RayJob, cpu: bool) -> Iterator[dict]:
    """Per chunk: header lengths, the batch plan, then each batch's files decoded (the one audio
    loader). Out, as each is ready: one row per model batch (items ``[index, path, audio, error]``),
    one per long file (audio left to the actor's stream past LOAD_LIMIT_S), one with the chunk's
    failures."""
    for chunk, paths in zip(batch["chunk"], batch["paths"]):
        chunk, paths = int(chunk), pickle.loads(paths)
        if job.triton:               # the server batches: one row per file
            for i, path in enumerate(paths):
                audio, error = _load(path, 16000)
                yield _row_batch([(chunk, "file", [[i, path, audio, error]])])
            continue
        plan = _plan(job, cpu)
        samples, errors = {}, []
        for i, path in enumerate(paths):
            try:
                samples[i] = file_samples(path, plan.sample_rate)
            except Exception as e:   # one unreadable input must not stop the others
                errors.append([i, path, None, error_text(path, e)])
        ok = list(samples)
        planned = set()
        for group in plan.plan_batches([samples[i] for i in ok]):
            items = []
            for k in group:
                i = ok[k]
                planned.add(i)
                audio, error = _load(paths[i], plan.sample_rate)
                items.append([i, paths[i], audio, error])
            yield _row_batch([(chunk, "batch", items)])
        for i in ok:
            if i not in planned:     # long: the engine's segments
                stream = samples[i] > LOAD_LIMIT_S * plan.sample_rate
                audio, error = (None, None) if stream else _load(paths[i], plan.sample_rate)
                yield _row_batch([(chunk, "long", [[i, paths[i], audio, error]])])
        if errors:
            yield _row_batch([(chunk, "error", errors)])


def _load(path: str, sample_rate: int) -> tuple[Optional[np.ndarray], Optional[str]]:
    try:
        return load_audio(path, sample_rate), None
    except Exception as e:
        return None, error_text(path, e)


class AcousticModel:
    """The model stage's actor: one engine (ONNX Runtime / OpenVINO) or one Triton client.
    ``JOB`` is bound by ``_actor_class`` (kept out of the object store, so a restart finds it)."""

    JOB: RayJob

    def __init__(self):
        import ray

        job = self.JOB
        # The node, for the spread report ("local" when run outside a Ray worker, as in benchmarks).
        self.node = ray.get_runtime_context().get_node_id()[:12] if ray.is_initialized() else "local"
        if job.triton:
            from w2v_serve.triton.client import TritonTranscriber

            self.triton = TritonTranscriber(job.triton, **job.triton_options)
            self.engine = None
        else:
            from w2v_serve.engine import Engine

            self.triton = None
            self.engine = Engine(job.model, job.engine)

    def __call__(self, batch: dict) -> dict:
        out = []
        for chunk, kind, items in _rows(batch):
            if kind == "error":
                done = [[i, path, None, 0, False, error, None] for i, path, _, error in items]
            elif kind == "file":
                done = [self._triton_file(*item) for item in items]
            elif kind == "long":
                done = [self._long(*item) for item in items]
            else:
                done = self._batch(items)
            out.append((chunk, self.node, done))
        return _row_batch(out)

    def _triton_file(self, i: int, path: str, audio, error):
        if error:
            return [i, path, None, 0, False, error, None]
        return [i, path, None, len(audio), False, None, self.triton.transcribe_audio(path, audio).to_json()]

    def _batch(self, items: list) -> list:
        """One model run over the batch's files (as ``Transcriber._run_batch``)."""
        engine = self.engine
        good = [it for it in items if it[3] is None and len(it[2]) >= engine.receptive_field]
        log_probs: dict = {}
        try:
            log_probs = dict(zip((it[0] for it in good), engine.infer([it[2] for it in good])))
        except Exception as e:       # the whole run failed: every row of it gets the reason
            for it in good:
                it[3] = inference_error(it[1], e)
        return [[i, path, log_probs.get(i), 0 if audio is None else len(audio), False, error, None]
                for i, path, audio, error in items]

    def _long(self, i: int, path: str, audio, error) -> list:
        """Windows, stitched (as ``Transcriber._run_long``): from the loaded samples, or streamed
        from the file."""
        if error:
            return [i, path, None, 0, False, error, None]
        engine = self.engine
        n = 0

        def blocks() -> Iterator[np.ndarray]:
            nonlocal n
            if audio is not None:
                step = int(10.0 * engine.sample_rate)
                source: Iterable[np.ndarray] = (audio[k:k + step] for k in range(0, len(audio), step))
            else:
                source = stream_audio(path, engine.sample_rate, block_frames=1 << 18)
            for block in source:
                n += len(block)
                yield block

        try:
            chunks = [chunk for _, chunk in engine.stream_log_probs(blocks())]
            lp = np.concatenate(chunks, axis=0) if chunks else None
        except Exception as e:
            return [i, path, None, 0, False, error_text(path, e), None]
        return [i, path, lp, n, True, None, None]


def _actor_class(job: RayJob) -> type:
    return type("AcousticModel", (AcousticModel,), {"JOB": job, "__module__": __name__})


def _decoder(job: RayJob):
    """This worker process's decoder for the job (the LM loads once per process, not per task)."""
    def make():
        from w2v_serve.model_dir import ModelDirectory

        directory = ModelDirectory.load(job.model)
        decoder = CTCDecoder(directory.vocab, job.decoder, frame_seconds=directory.card.frame_seconds)
        return decoder, directory.vocab, directory.card.frame_seconds, directory.card.sample_rate

    return _cached(_DECODERS, (job.model, job.decoder), make)


def decode_stage(batch: dict, job: RayJob) -> dict:
    """Each input's JSON-lines object: the transcript (beam search / greedy, LM) or the error.
    Out items: ``[index, line, failed, duration_s]``, rows keyed by the model actor's node."""
    out = []
    for chunk, node, items in _rows(batch):
        done = []
        for i, path, lp, samples, is_long, error, result in items:
            if error:
                r = TranscriptionResult(path, error=error)
            elif result is not None:             # decoded by the Triton server
                r = TranscriptionResult.from_dict(json.loads(result))
            else:
                decoder, vocab, frame_seconds, sample_rate = _decoder(job)
                try:
                    if lp is None:               # shorter than the model's receptive field
                        t = Transcript("")
                    elif is_long:
                        t = Transcript.join([decoder.decode(f, frame_offset=o, hotwords=None)
                                             for f, o in segments([(0, lp)], vocab, frame_seconds)])
                    else:
                        t = decoder.decode(lp, frame_offset=0, hotwords=None)
                    r = TranscriptionResult(path, t.text, t.words, samples / sample_rate)
                except Exception as e:   # this input's decode failed: it alone
                    r = TranscriptionResult(path, error=error_text(path, e))
            line = result if result is not None and not error else r.to_json()
            done.append([i, line, not r.ok, r.duration_s])
        out.append((chunk, node, done))
    return _row_batch(out)


# ---------------------------------------------------------------------------- output directory
def path_key(path: str) -> int:
    """An input's identity in the resume index (8 bytes of BLAKE2b of the path as given)."""
    return int.from_bytes(hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit_file(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to ``.NAME.tmp`` beside ``path``, fsync it, rename it to ``path``, fsync the
    folder: a reader (or a rerun) sees the whole file or none."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _parquet_schema():
    import pyarrow as pa

    word = pa.struct([("word", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64()),
                      ("confidence", pa.float64())])
    return pa.schema([("path", pa.string()), ("text", pa.string()), ("duration_s", pa.float64()),
                      ("words", pa.list_(word)), ("error", pa.string())])


class OutputDir:
    """The sharded output and its resume index."""

    def __init__(self, directory: str, *, parquet: bool, shard_rows: int, shard_seconds: float):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.parquet = parquet
        self.shard_rows, self.shard_seconds = max(1, shard_rows), shard_seconds
        self.run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{os.getpid()}"
        self.seq = 0
        self.rows: list[str] = []
        self.opened = time.monotonic()
        self.done: dict[int, bool] = {}        # path key -> failed
        self._scan()

    def _scan(self) -> None:
        for tmp in self.dir.glob(f".{SHARD_PREFIX}*.tmp"):     # an interrupted run's partial shard
            tmp.unlink(missing_ok=True)
        for shard in sorted(self.dir.glob(f"{SHARD_PREFIX}*.jsonl")):
            with open(shard, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    try:
                        obj = json.loads(line)
                        self.done[path_key(obj["path"])] = "error" in obj
                    except (json.JSONDecodeError, KeyError, TypeError):
                        log.warning("%s:%d: not a result row; ignored", shard, n)

    def add_chunk(self, lines: list[str]) -> None:
        """A whole chunk's rows (a shard holds whole chunks)."""
        self.rows.extend(lines)
        if len(self.rows) >= self.shard_rows or time.monotonic() - self.opened >= self.shard_seconds:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            self.opened = time.monotonic()
            return
        name = f"{SHARD_PREFIX}{self.run_id}-{self.seq:05d}"
        rows, self.rows = self.rows, []
        if self.parquet:             # first: the .jsonl is the commit record
            import pyarrow.parquet as pq
            import pyarrow as pa

            table = pa.Table.from_pylist([json.loads(r) for r in rows], schema=_parquet_schema())
            commit_file(self.dir / f"{name}.parquet", lambda p: pq.write_table(table, p))
        commit_file(self.dir / f"{name}.jsonl",
                    lambda p: p.write_text("".join(r + "\n" for r in rows), encoding="utf-8"))
        self.seq += 1
        self.opened = time.monotonic()


# ---------------------------------------------------------------------------- progress
class Progress:
    """One status line on stderr: files, audio hours, real-time factor, failures."""

    def __init__(self, total: Optional[int], enabled: bool, every_s: float = 5.0):
        self.total, self.enabled, self.every_s = total, enabled, every_s
        self.tty = enabled and sys.stderr.isatty()
        self.start = self.last = time.monotonic()
        self.summary: Optional[RunSummary] = None

    def line(self, s: RunSummary) -> str:
        wall = time.monotonic() - self.start
        files = s.done + s.skipped
        total = f"/{self.total}" if self.total is not None else ""
        rtf = f"{wall / s.audio_s:.4f}" if s.audio_s > 0 else "-"
        return (f"transcribe (ray): files {files}{total} ({s.skipped} done before), "
                f"audio {s.audio_s / 3600:.3f} h, RTF {rtf}, {s.done / wall if wall > 0 else 0:.1f} files/s, "
                f"failed {s.failed + s.skipped_failed}")

    def update(self, s: RunSummary, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < (0.5 if self.tty else self.every_s)):
            return
        self.last = now
        end = "\r" if self.tty and not force else "\n"
        print(self.line(s), end=end, file=sys.stderr, flush=True)
        if force and s.per_node:
            spread = ", ".join(f"{node} {n} files {a / 3600:.3f} h" for node, (n, a) in sorted(s.per_node.items()))
            print(f"transcribe (ray): model actors' nodes: {spread}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- driver
def connect(ray, address: str) -> None:
    """Join a running cluster (HOST:PORT, auto) or start one on this host (local)."""
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    try:
        if address == "local":
            ray.init(address="local", object_store_memory=LOCAL_OBJECT_STORE, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RayUnavailable(f"cannot reach a Ray cluster at {address!r}: {e}") from e


def _actor_cpus(ray, threads: int) -> float:
    """CPUs a model actor reserves: its --threads (at least 1), but one CPU of the largest node
    left to the load and decode tasks (an actor holding a whole node would starve them there);
    half a CPU on one-CPU nodes."""
    largest = max((n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)
    return max(0.5, min(max(1, threads), largest - 1))


def _actors(ray, settings: RaySettings) -> int:
    if settings.actors:
        return settings.actors
    if settings.num_gpus_per_actor > 0:
        gpus = ray.cluster_resources().get("GPU", 0)
        return max(1, int(gpus // settings.num_gpus_per_actor))
    return max(1, sum(1 for n in ray.nodes() if n.get("Alive")))


_SCHEDULED, _WRITTEN, _REPEAT = "scheduled", "written", "repeat"


def _chunks(inputs: Iterable[str], size: int) -> Iterator[list[str]]:
    """Consecutive inputs, ``size`` at a time (positions in the whole listing: a rerun forms the
    same chunks)."""
    chunk: list[str] = []
    for path in inputs:
        chunk.append(path)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Collector:
    """Results per chunk; a chunk is written (and becomes done) only once all of its inputs are
    in, so a rerun finds each chunk done or not, and redoes a chunk with the batches it had."""

    def __init__(self, out: OutputDir, summary: RunSummary, on_result):
        self.out, self.summary, self.on_result = out, summary, on_result
        self.done_before = out.done                 # path key -> failed, from earlier runs
        self.written: set[int] = set()              # path keys written by this run
        self.chunks: dict[int, tuple[list[str], dict]] = {}

    def schedule(self, chunk_id: int, paths: list[str]) -> bool:
        """Whether the chunk needs running; its inputs done earlier are counted as skipped."""
        fresh = False
        for path in paths:
            key = path_key(path)
            if key in self.written:
                continue
            if key in self.done_before:
                self.summary.skipped += 1
                self.summary.skipped_failed += bool(self.done_before.pop(key))
                self.written.add(key)               # repeats later in the listing: not again
            else:
                fresh = True
        if fresh:
            self.chunks[chunk_id] = (paths, {})
        return fresh

    def add(self, chunk_id: int, items: list, node: str) -> None:
        entry = self.chunks.get(chunk_id)
        if entry is None:                           # a retried task's repeat of a written chunk
            return
        paths, results = entry
        for i, line, failed, duration in items:
            results[i] = (line, failed, duration, node)     # a retried task's repeat overwrites its twin
        if len(results) < len(paths):
            return
        del self.chunks[chunk_id]
        lines = []
        for i, path in enumerate(paths):
            key = path_key(path)
            if key in self.written:                 # repeated in the listing, or done earlier
                continue
            self.written.add(key)
            line, failed, duration, node = results[i]
            lines.append(line)
            spread = self.summary.per_node.setdefault(node, [0, 0.0])
            spread[0] += 1
            spread[1] += duration
            self.summary.done += 1
            self.summary.failed += bool(failed)
            self.summary.audio_s += duration
            if self.on_result is not None:
                self.on_result(TranscriptionResult.from_dict(json.loads(line)))
        self.out.add_chunk(lines)


def transcribe_on_ray(inputs: Iterable[str], job: RayJob, settings: RaySettings, *,
                      total: Optional[int] = None,
                      on_result: Optional[Callable[[TranscriptionResult], None]] = None) -> RunSummary:
    """Run the pipeline over ``inputs`` (any iterable: read a window at a time); results go to the
    output directory as their chunks complete; ``on_result`` sees each (per-file outputs, errors)."""
    ray = import_ray()
    out = OutputDir(settings.output_dir, parquet=settings.parquet, shard_rows=settings.shard_rows,
                    shard_seconds=settings.shard_seconds)
    summary = RunSummary()
    progress = Progress(total, settings.progress)
    collector = _Collector(out, summary, on_result)
    started = time.monotonic()
    connect(ray, settings.address)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            # Batches go to the least busy actor, not to one on the node that loaded them: a
            # batch's audio is small next to its compute, and a job of one chunk (one load task)
            # would otherwise run on one node's actors only.
            ctx.execution_options.actor_locality_enabled = False
        # Every model actor is up (model loaded) before the first batch is sent, so a small job's
        # batches spread over all of them rather than all going to the first one ready.
        ctx.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
        # One row (a model batch) per block: Ray Data would merge a load task's rows into one
        # block up to its target size, and a block goes to one actor whole.
        ctx.target_max_block_size = ROW_BLOCK_BYTES
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        actors = _actors(ray, settings)
        actor_cpus = _actor_cpus(ray, job.engine.threads)
        chunk_size = CHUNK_BATCHES * max(1, settings.batch_size)
        per_window = max(1, settings.window_files // chunk_size)
        window: list[tuple[int, list[str]]] = []
        for chunk_id, paths in enumerate(_chunks(inputs, chunk_size)):
            if collector.schedule(chunk_id, paths):
                window.append((chunk_id, paths))
            progress.update(summary)
            if len(window) == per_window:
                _run_window(ray, window, job, settings, (actors, actor_cpus), collector, progress)
                window = []
        if window:
            _run_window(ray, window, job, settings, (actors, actor_cpus), collector, progress)
    except (RayUnavailable, KeyboardInterrupt):
        raise
    except Exception as e:         # a stage failed past its retries, the cluster went away ...
        raise RayJobFailed(f"the Ray job stopped ({type(e).__name__}: {str(e).strip()[:2000]}); the finished "
                           f"chunks are in {settings.output_dir}: rerun the command to go on from there") from e
    finally:
        out.flush()
        summary.wall_s = time.monotonic() - started
        progress.update(summary, force=True)
        ray.shutdown()
    return summary


def _run_window(ray, window: list[tuple[int, list[str]]], job: RayJob, settings: RaySettings,
                pool: tuple[int, float], collector: _Collector, progress: Progress) -> None:
    actors, actor_cpus = pool
    ds = ray.data.from_items([{"chunk": c, "paths": pickle.dumps(p, protocol=5)} for c, p in window],
                             override_num_blocks=len(window))
    # Tasks whose worker dies run again (Ray's default for tasks: 3 retries).
    ds = ds.map_batches(load_stage, fn_kwargs={"job": job, "cpu": settings.num_gpus_per_actor == 0},
                        batch_size=1, batch_format="numpy", num_cpus=1)
    gpu = settings.num_gpus_per_actor if settings.num_gpus_per_actor > 0 else None
    with warnings.catch_warnings():     # Ray 2.60 has no named parameters for these
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ds.map_batches(_actor_class(job), batch_size=1, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=2), num_cpus=actor_cpus,
                            num_gpus=gpu, max_restarts=-1, max_task_retries=ACTOR_TASK_RETRIES,
                            scheduling_strategy="SPREAD")
    ds = ds.map_batches(decode_stage, fn_kwargs={"job": job}, batch_size=4, batch_format="numpy", num_cpus=1)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for chunk, node, items in _rows(batch):
            collector.add(chunk, items, node)
        progress.update(collector.summary)
