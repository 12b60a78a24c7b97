"""The acoustic model at run time: an ONNX Runtime session over a model directory's ``model.onnx``.

* Execution providers: TensorRT, then CUDA, then CPU, whichever this onnxruntime build has.
* Batches: rows padded to the longest, with ``lengths`` so each row gets the result it gets alone;
  ``plan_batches`` groups inputs of similar length (length buckets) so little compute is padding.
* Long recordings: overlapping windows. Window k starts at ``k * hop`` samples (a multiple of the
  frame stride, so its frames fall on the recording's frame grid) and is ``hop + 2 * context``
  long; of its frames we keep those whose own context reaches ``context`` into both neighbours,
  and the kept frames of consecutive windows tile the recording exactly. ``stream_log_probs``
  takes the audio as a stream of blocks and yields the stitched frames as they are ready, so
  memory stays bounded by the window batch whatever the duration.

Output is log-probabilities [frames, vocab] per input (log-softmax applied here when the card says
the graph emits raw logits).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import onnxruntime as ort

from w2v_serve.model_dir import FULL_GRAPH, ModelDirectory

# Most capable first; the first ones this onnxruntime build has are used (CPU always last).
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class EngineError(RuntimeError):
    """The model cannot be loaded or run."""


@dataclass(frozen=True)
class EngineOptions:
    variant: str = "fp32"                    # which graph variant of the model card (fp32, fp16, int8)
    providers: Optional[tuple[str, ...]] = None   # default: PROVIDER_PREFERENCE ∩ available
    threads: int = 0                         # intra-op threads; 0 = onnxruntime's choice (all cores)
    batch_size: int = 8                      # rows per run (short files, or windows of a long one)
    max_batch_seconds: float = 120.0         # and at most this much padded audio per run (memory:
                                             # attention grows with rows x length^2)
    window_s: float = 30.0                   # recordings longer than this go through windows
    context_s: float = 2.0                   # overlap on each side of a window's kept frames
    pad_multiple: int = 0                    # pad batch length to a multiple of this many samples
                                             # (0: the frame stride; TensorRT: 1 s, fewer engine shapes)


class Engine:
    """Runs ``model.onnx`` of a model directory on batches and on arbitrarily long audio."""

    def __init__(self, model: ModelDirectory | str | Path, options: EngineOptions = EngineOptions()):
        self.model = model if isinstance(model, ModelDirectory) else ModelDirectory.load(model)
        self.options = options
        card = self.model.card
        self.sample_rate = card.sample_rate
        self.stride = card.frame_stride
        self.receptive_field = card.receptive_field
        self.frame_seconds = card.frame_seconds
        self.session = self._open_session(self.model.graph_path(FULL_GRAPH, options.variant))
        self.providers = tuple(self.session.get_providers())    # what onnxruntime actually uses
        pad = options.pad_multiple or (self.sample_rate if self.providers[0].startswith("Tensorrt") else self.stride)
        self.pad_multiple = max(self.stride, pad - pad % self.stride)
        # Window geometry in samples, all multiples of the stride (frames align across windows).
        self.context = max(1, round(options.context_s * self.sample_rate / self.stride)) * self.stride
        window = max(round(options.window_s * self.sample_rate / self.stride) * self.stride, 4 * self.context)
        self.hop = window - 2 * self.context
        self.window = window

    def _open_session(self, path: Path) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        # Without the arena, each run's buffers go back to the system: peak memory is that of the
        # largest run (bounded by batch_size x window), not an arena that keeps growing in steps
        # as run shapes vary over an hour-long recording (measured: +300 MiB from 2.5 to 10 min).
        so.enable_cpu_mem_arena = False
        # Idle intra-op workers would spin and take the cores from audio loading and beam search,
        # which run between (and beside) model runs; measured: ~15% more CPU for the same work.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.options.threads:
            so.intra_op_num_threads = self.options.threads
        so.log_severity_level = 3          # errors only; the providers in use are in Engine.providers
        available = ort.get_available_providers()
        wanted = self.options.providers or PROVIDER_PREFERENCE
        providers: list = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        if "TensorrtExecutionProvider" in providers:
            providers[providers.index("TensorrtExecutionProvider")] = ("TensorrtExecutionProvider", self._trt_options(path))
        try:
            session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as e:   # onnxruntime raises its own exception types
            raise EngineError(f"{path}: cannot load the model ({e})") from e
        inputs = {i.name for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        if not {"audio", "lengths"} <= inputs or not {"logits", "logit_lengths"} <= outputs:
            raise EngineError(f"{path}: expected inputs audio, lengths and outputs logits, logit_lengths; "
                              f"got {sorted(inputs)} -> {sorted(outputs)}")
        return session

    def _trt_options(self, path: Path) -> dict:
        """TensorRT builds an engine per input shape profile, which takes minutes: cache them per
        model file (and build fp16 kernels for the fp16 variant)."""
        import hashlib
        import os

        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "w2v" / "tensorrt" / key
        cache.mkdir(parents=True, exist_ok=True)
        return {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                "trt_fp16_enable": self.options.variant == "fp16"}

    # ------------------------------------------------------------------ geometry
    def num_frames(self, n_samples: int) -> int:
        """Frames the conv encoder gives for ``n_samples`` (0 below one receptive field)."""
        return 0 if n_samples < self.receptive_field else (n_samples - self.receptive_field) // self.stride + 1

    def is_long(self, n_samples: int) -> bool:
        return n_samples > self.window

    def plan_batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices grouped into batches of similar length (sorted, then cut every batch_size rows);
        long inputs (windowed) are left out."""
        order = sorted((i for i, n in enumerate(lengths) if not self.is_long(n)), key=lambda i: lengths[i])
        batches: list[list[int]] = []
        for i in order:
            # Sorted ascending, so row i is the longest: the batch pads every row to its length.
            if batches and len(batches[-1]) < self.options.batch_size and \
                    (len(batches[-1]) + 1) * lengths[i] <= self.max_batch_samples:
                batches[-1].append(i)
            else:
                batches.append([i])
        return batches

    @property
    def max_batch_samples(self) -> int:
        return int(self.options.max_batch_seconds * self.sample_rate)

    # ------------------------------------------------------------------ inference
    def infer(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One session run over mono float32 arrays; log-probs [frames_i, vocab] per array."""
        if not batch:
            return []
        lengths = np.array([len(a) for a in batch], dtype=np.int64)
        if lengths.min() < self.receptive_field:
            short = int(lengths.argmin())
            raise EngineError(f"input {short} has {lengths[short]} samples; the model needs at least "
                              f"{self.receptive_field} ({1000 * self.receptive_field / self.sample_rate:.0f} ms)")
        width = -(-int(lengths.max()) // self.pad_multiple) * self.pad_multiple
        audio = np.zeros((len(batch), width), dtype=np.float32)
        for row, a in zip(audio, batch):
            row[: len(a)] = a
        logits, logit_lengths = self.session.run(["logits", "logit_lengths"], {"audio": audio, "lengths": lengths})
        if not self.model.card.logits_are_log_probs:
            logits = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        return [logits[i, : int(logit_lengths[i])] for i in range(len(batch))]

    def log_probs(self, audio: np.ndarray) -> np.ndarray:
        """Log-probs of one recording of any length (windows when it is long)."""
        if not self.is_long(len(audio)):
            return self.infer([audio])[0]
        return np.concatenate([chunk for _, chunk in self.stream_log_probs([audio])], axis=0)

    def stream_log_probs(self, blocks: Iterable[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
        """Stitched log-probs of the recording whose samples ``blocks`` yields in order.

        Yields ``(first_frame, log_probs)`` chunks that tile the recording's frames in order. Holds at
        most one run's windows (``batch_size``, within ``max_batch_seconds``) of audio at a time.
        """
        bs = max(1, min(self.options.batch_size, self.max_batch_samples // self.window))
        stride, hop, ctx, window = self.stride, self.hop, self.context, self.window
        buffer = np.zeros(0, dtype=np.float32)
        start = 0            # recording sample index of buffer[0]; always a window start
        next_frame = 0       # first frame not yet emitted
        pending: list[np.ndarray] = []

        def run(windows: list[tuple[int, np.ndarray, bool]]) -> Iterator[tuple[int, np.ndarray]]:
            nonlocal next_frame
            outputs = self.infer([w for _, w, _ in windows])
            for (w_start, _, last), lp in zip(windows, outputs):
                first_kept = next_frame - w_start // stride
                stop = len(lp) if last else (hop + ctx) // stride
                chunk = lp[first_kept:stop]
                if len(chunk):
                    yield next_frame, chunk
                    next_frame += len(chunk)

        for block in blocks:
            pending.append(np.asarray(block, dtype=np.float32))
            if sum(len(p) for p in pending) < window:
                continue
            buffer = np.concatenate([buffer, *pending])
            pending = []
            # Enough for bs windows that are surely not the last (more audio follows each).
            while len(buffer) > (bs - 1) * hop + window:
                windows = [(start + k * hop, buffer[k * hop: k * hop + window], False) for k in range(bs)]
                yield from run(windows)
                buffer = buffer[bs * hop:].copy()
                start += bs * hop
        buffer = np.concatenate([buffer, *pending])
        # The rest: windows until one reaches the end.
        windows = []
        k = 0
        while True:
            piece = buffer[k * hop: k * hop + window]
            last = k * hop + window >= len(buffer)
            if len(piece) >= self.receptive_field:
                windows.append((start + k * hop, piece, last))
            if last:
                break
            k += 1
        for b in range(0, len(windows), bs):
            yield from run(windows[b:b + bs])

