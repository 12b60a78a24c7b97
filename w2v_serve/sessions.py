"""The one place inference sessions are made (batch engine, streaming, export checks, Triton).

Two runtimes behind one interface, ``run(output_names, feeds) -> [arrays]``, ``get_inputs()`` /
``get_outputs()`` (objects with ``.name``) and ``get_providers()``:

* ``onnxruntime``: an ``onnxruntime.InferenceSession``. Every session: full graph optimization,
  sequential execution, no CPU memory arena (each run's buffers go back to the system, so peak
  memory follows the largest run instead of an arena that keeps every shape it has seen: measured
  +300 MiB from 2.5 to 10 min of audio in the Engine), and no spinning of idle intra-op workers
  (they would take the cores from audio loading, decoding and the event loop that run between and
  beside model runs: measured ~15% more CPU for the same work). Providers: the first of
  ``providers`` this onnxruntime build has (CPU always last); TensorRT engines are cached per
  model file because building one takes minutes.
* ``openvino``: ``OpenVINOSession``, the same ONNX file compiled by OpenVINO's CPU plugin
  (optional extra ``w2v[openvino]``): dynamic shapes, a pool of reusable infer requests (one per
  concurrent caller), latency hint with one stream and ``threads`` inference threads, compiled
  blobs of graphs over 4 MiB cached on disk (``~/.cache/w2v/openvino``, at most 2 GiB) so a
  second start-up skips the compilation; bf16 compilations are never cached (an AMX Xeon gave
  NaNs from one read back), their graphs are cached in OpenVINO's own form instead
  (``~/.cache/w2v/openvino-ir``, at most 2 GiB), which skips reading the ONNX file. ``precision``: ``fp32`` pins
  f32 inference (the CPU plugin's default is bf16 on CPUs with AMX/AVX512_BF16), ``bf16`` asks
  for bf16 and fails clearly where the CPU has none.
* ``auto``: OpenVINO when it is installed and no CUDA/TensorRT provider is wanted and present,
  else ONNX Runtime (``resolve_runtime``). The Engine refines this with the model's precision
  check when it was measured on this kind of CPU (w2v_serve.engine.choose_runtime_and_precision).
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import onnxruntime as ort

# Most capable first (batch transcription, the Triton acoustic model).
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# Streaming: not TensorRT, which would build an engine for every new window shape.
STREAMING_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
CPU_ONLY = ("CPUExecutionProvider",)
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")

AUTO, ONNXRUNTIME, OPENVINO = "auto", "onnxruntime", "openvino"
RUNTIMES = (AUTO, ONNXRUNTIME, OPENVINO)
OPENVINO_PROVIDER = "OpenVINO:CPU"        # what an OpenVINO session's get_providers() names
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


class EngineError(RuntimeError):
    """The model cannot be loaded or run."""


# ---------------------------------------------------------------------------- runtime choice
def openvino_available() -> bool:
    """Whether the openvino package is installed (found, not imported: importing it costs ~0.3 s
    of start-up that a run on ONNX Runtime should not pay)."""
    import importlib.util

    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False


def gpu_providers_present(providers: Optional[Sequence[str]] = None) -> list[str]:
    """The CUDA/TensorRT providers among ``providers`` (default: all) that this onnxruntime has."""
    available = ort.get_available_providers()
    wanted = providers if providers is not None else PROVIDER_PREFERENCE
    return [p for p in wanted if p in GPU_PROVIDERS and p in available]


def resolve_runtime(runtime: str = AUTO, providers: Optional[Sequence[str]] = None) -> str:
    """``onnxruntime`` or ``openvino`` for a wanted ``runtime`` (auto: OpenVINO on CPU when it is
    installed and no GPU provider is both wanted and present). Forcing OpenVINO when it is not
    installed is an ``EngineError`` that says how to get it."""
    if runtime not in RUNTIMES:
        raise EngineError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == OPENVINO:
        if not openvino_available():
            raise EngineError("runtime 'openvino' asked for, but OpenVINO is not installed: "
                              "pip install 'w2v[openvino]' (or use --runtime onnxruntime)")
        return OPENVINO
    if runtime == ONNXRUNTIME:
        return ONNXRUNTIME
    return OPENVINO if openvino_available() and not gpu_providers_present(providers) else ONNXRUNTIME


def machine_signature() -> dict:
    """What makes runtime speed measurements transferable between machines: the CPU model and its
    vector extensions (a precision check's speeds apply where these are equal)."""
    import platform

    cpu, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = sorted(f for f in line.split(":", 1)[1].split()
                               if f.startswith(("avx512", "amx")) or f in ("avx2", "avx_vnni"))
    except OSError:
        pass
    return {"cpu": cpu, "cpu_flags": flags}


def openvino_supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here (AMX or AVX512_BF16)."""
    if not openvino_available():
        return False
    return "BF16" in _ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


# ---------------------------------------------------------------------------- factory
def open_session(path: str | Path, *, runtime: str = ONNXRUNTIME, providers: Optional[Sequence[str]] = None,
                 threads: int = 0, fp16: bool = False, precision: Optional[str] = None):
    """An inference session over the ONNX file ``path``.

    runtime: ``onnxruntime`` (the default here: export checks and Triton want it), ``openvino`` or
    ``auto`` (see ``resolve_runtime``). providers: ONNX Runtime's wanted execution providers in
    order (default ``PROVIDER_PREFERENCE``); those this build lacks are skipped. threads: intra-op
    threads (0: the runtime's choice, all cores). fp16: let TensorRT build fp16 kernels (the fp16
    variant). precision: OpenVINO's inference precision, ``fp32`` or ``bf16`` (None: fp32)."""
    chosen = resolve_runtime(runtime, providers)
    if chosen == OPENVINO:
        return OpenVINOSession(path, threads=threads, precision=precision or "fp32")
    if precision not in (None, "fp32"):
        raise EngineError(f"precision {precision!r} needs the openvino runtime (ONNX Runtime runs the "
                          "fp32, fp16 and int8 graph variants as they are)")
    return _ort_session(Path(path), providers, threads, fp16)


def ort_session_options(threads: int = 0) -> ort.SessionOptions:
    """The ONNX Runtime settings every session of the product runs with (benchmarks that profile
    a session start from these too). threads: intra-op threads (0: the runtime's choice)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = False
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3          # errors only; session.get_providers() says what runs
    return so


def _ort_session(path: Path, providers: Optional[Sequence[str]], threads: int, fp16: bool) -> ort.InferenceSession:
    so = ort_session_options(threads)
    available = ort.get_available_providers()
    chosen: list = [p for p in (providers or PROVIDER_PREFERENCE) if p in available] or list(CPU_ONLY)
    if "TensorrtExecutionProvider" in chosen:
        chosen[chosen.index("TensorrtExecutionProvider")] = ("TensorrtExecutionProvider", _tensorrt_options(path, fp16))
    try:
        return ort.InferenceSession(str(path), so, providers=chosen)
    except Exception as e:   # onnxruntime raises its own exception types
        raise EngineError(f"{path}: cannot load the model ({e})") from e


def cache_root() -> Path:
    """The user cache of w2v: ``$XDG_CACHE_HOME/w2v`` (default ``~/.cache/w2v``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "w2v"


def _tensorrt_options(path: Path, fp16: bool) -> dict:
    cache = cache_root() / "tensorrt" / _file_key(path)
    cache.mkdir(parents=True, exist_ok=True)
    return {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache), "trt_fp16_enable": fp16}


# ---------------------------------------------------------------------------- OpenVINO
@dataclass(frozen=True)
class NodeArg:
    """An input or output as onnxruntime describes it (``name``, ``shape`` with None for dynamic
    dimensions, ``type`` as OpenVINO names the element type)."""

    name: str
    shape: tuple
    type: str


_CORE: Any = None
_CORE_LOCK = threading.Lock()


def _ov_core():
    """One OpenVINO Core per process (it holds the plugins and the compiled-blob cache)."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            import openvino as ov

            _CORE = ov.Core()
        return _CORE


OPENVINO_CACHE_BYTES = 2 << 30      # compiled blobs kept (about a model's size each), oldest dropped first
OPENVINO_CACHE_MIN_BYTES = 4 << 20  # graphs smaller than this are compiled every time
_OPENVINO_SESSIONS: "weakref.WeakSet[OpenVINOSession]" = weakref.WeakSet()


def release_runtime_memory() -> int:
    """Hand back the intermediate buffers of every OpenVINO session of this process that is not
    running (``OpenVINOSession.release_memory``); the number released. A compiled model keeps
    buffers sized for the longest input it ran until then."""
    return sum(session.release_memory() for session in list(_OPENVINO_SESSIONS))


STAGING_MAX_AGE_S = 3600            # a cache folder still being written after this was abandoned


def _trim_cache(cache_dir: Path, limit: int = OPENVINO_CACHE_BYTES) -> None:
    """Drop the oldest entries of ``cache_dir`` (files, or folders counted by their files) until
    it holds at most ``limit`` bytes; never the newest, the one just written or used. Staging
    folders (``.NAME...``, being written) are left alone unless older than ``STAGING_MAX_AGE_S``:
    a process killed while writing one."""
    def size(p: Path) -> int:
        return sum(f.stat().st_size for f in p.iterdir() if f.is_file()) if p.is_dir() else p.stat().st_size

    try:
        staging = [p for p in cache_dir.iterdir() if p.is_dir() and p.name.startswith(".")]
        for p in staging:
            if time.time() - p.stat().st_mtime > STAGING_MAX_AGE_S:
                shutil.rmtree(p, ignore_errors=True)
        entries = sorted((p.stat().st_mtime, size(p), p) for p in cache_dir.iterdir()
                         if p.is_file() or (p.is_dir() and not p.name.startswith(".")))
        total = sum(n for _, n, _ in entries)
        for _, n, p in entries[:-1]:
            if total <= limit:
                break
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            total -= n
    except OSError:
        pass


def _file_key(path: Path) -> str:
    """A cache key for a model file: its resolved path, size and modification time."""
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def _ov_model(core: Any, path: Path, cache: bool) -> Any:
    """What ``compile_model`` gets for an ONNX file when no compiled blob may be cached (bf16):
    OpenVINO's own form of the graph (IR: ``model.xml`` + ``model.bin``), kept in
    ``cache_root()/openvino-ir/KEY/`` (KEY: the ONNX file's path, size and time), so a process
    reads it in a few hundredths of a second instead of converting the ONNX file (about 0.6 s for
    BASE). The first use converts and writes it (atomically: a folder renamed into place);
    without ``cache``, on a cache that cannot be written or read, the ONNX file's path."""
    if not cache:
        return str(path)
    root = cache_root() / "openvino-ir"
    entry = root / _file_key(path)
    xml = entry / "model.xml"
    if xml.is_file():
        try:
            model = core.read_model(str(xml))
            os.utime(entry)                              # used: the newest for trimming
            return model
        except Exception:                                # unreadable: convert again below
            shutil.rmtree(entry, ignore_errors=True)
    import openvino as ov

    model = core.read_model(str(path))
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=root))
        ov.save_model(model, str(staging / "model.xml"), compress_to_fp16=False)
        try:
            staging.rename(entry)
        except OSError:                                  # another process wrote it first
            shutil.rmtree(staging, ignore_errors=True)
        _trim_cache(root)
    except Exception:                                    # a read-only or full cache: run from the model
        pass
    return model


def _node_args(ports) -> list[NodeArg]:
    out = []
    for port in ports:
        shape = tuple(None if d.is_dynamic else d.get_length() for d in port.get_partial_shape())
        out.append(NodeArg(port.get_any_name(), shape, port.get_element_type().get_type_name()))
    return out


class OpenVINOSession:
    """An ONNX file compiled by OpenVINO's CPU plugin, with onnxruntime's session interface.

    Thread-safe: each ``run`` takes an idle infer request from a pool (making one when all are
    busy) and gives it back, so concurrent callers never share one and a single caller reuses the
    same request (and its buffers) run after run. Outputs are copies the caller owns.
    """

    def __init__(self, path: str | Path, *, threads: int = 0, precision: str = "fp32",
                 cache: bool = True) -> None:
        if precision not in _OV_PRECISION:
            raise EngineError(f"OpenVINO precision must be one of {', '.join(_OV_PRECISION)}, not {precision!r}")
        if not openvino_available():
            raise EngineError("OpenVINO is not installed: pip install 'w2v[openvino]'")
        self.path = Path(path)
        self.precision = precision
        core = _ov_core()
        if precision == "bf16" and not openvino_supports_bf16():
            raise EngineError("bf16 inference needs a CPU with AMX or AVX512_BF16; OpenVINO reports "
                              f"{core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES')} here (use fp32 or int8)")
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        cache_dir = cache_root() / "openvino"
        # Small graphs compile in well under a second: not worth a blob each (tests make many).
        # Never bf16: on an AMX Xeon (OpenVINO 2026.4) a bf16 model read back from CACHE_DIR gave
        # all-NaN output, ran 6x slower than compiled afresh, and once crashed the process; compiled
        # without the cache the same graph is correct and fast (docs/engine.md).
        # Those get OpenVINO's form of the graph cached instead (_ov_model), which saves its reading.
        large = self.path.stat().st_size >= OPENVINO_CACHE_MIN_BYTES
        ir_cache = cache and large and self.path.suffix == ".onnx"
        cache = cache and precision != "bf16" and large
        if cache:
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
                config["CACHE_DIR"] = str(cache_dir)
            except OSError:
                cache = False              # a read-only home: compile every time
        try:
            source = str(self.path) if cache else _ov_model(core, self.path, ir_cache)
            self._compiled = core.compile_model(source, "CPU", config)
        except Exception as e:     # OpenVINO raises RuntimeError subclasses of its own
            raise EngineError(f"{self.path}: OpenVINO cannot load the model ({e})") from e
        if cache:
            _trim_cache(cache_dir)
        self._inputs = _node_args(self._compiled.inputs)
        self._outputs = _node_args(self._compiled.outputs)
        self._output_index = {o.name: i for i, o in enumerate(self._outputs)}
        self._idle: "queue.SimpleQueue" = queue.SimpleQueue()
        self._idle.put(self._compiled.create_infer_request())
        self._running = 0
        self._running_lock = threading.Lock()
        _OPENVINO_SESSIONS.add(self)

    # -------------------------------------------------------------- onnxruntime's interface
    def get_inputs(self) -> list[NodeArg]:
        return list(self._inputs)

    def get_outputs(self) -> list[NodeArg]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return [OPENVINO_PROVIDER]

    def run(self, output_names: Optional[Sequence[str]], feeds: Mapping[str, Any], run_options=None) -> list:
        names = list(output_names) if output_names else [o.name for o in self._outputs]
        unknown = [n for n in names if n not in self._output_index]
        if unknown:
            raise EngineError(f"{self.path}: no output(s) {unknown}; has {list(self._output_index)}")
        with self._running_lock:
            self._running += 1
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            # share_inputs: no copy of the caller's arrays; outputs are copied (share_outputs=False)
            # because the request's buffers are overwritten by its next run.
            result = request.infer(dict(feeds), share_inputs=True, share_outputs=False)
            return [result[self._output_index[n]] for n in names]
        finally:
            self._idle.put(request)
            with self._running_lock:
                self._running -= 1

    def release_memory(self) -> bool:
        """Free the compiled model's intermediate buffers (they are allocated again by the next
        run) if no run is in progress; a run that starts meanwhile waits. True when freed."""
        with self._running_lock:
            if self._running:
                return False
            self._compiled.release_memory()
            return True

    # -------------------------------------------------------------- extras
    @property
    def inference_precision(self) -> str:
        """The precision the compiled model really runs (OpenVINO's own name: f32, bf16)."""
        return self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    @property
    def threads(self) -> int:
        return int(self._compiled.get_property("INFERENCE_NUM_THREADS"))
