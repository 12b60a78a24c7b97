"""The Python-backend models of the Triton repository (``model_repository/*/1/model.py`` are
one-line shims onto these classes, in the style of k2-fsa/sherpa's model_repo_streaming).

* ``AcousticModel``: stateless ONNX Runtime over ``model.onnx``, behind the dynamic batcher:
  rows of different lengths (ragged batching) are padded into one run with ``lengths``.
* ``OfflineModel``: audio -> transcript JSON (text, words). The acoustic work goes to the
  ``acoustic`` model through business-logic scripting (so it batches with everyone else's and
  may live on a GPU instance); windowing of long audio and decoding run here, on CPU instances.
* ``StreamingModel``: sequence batching (START/END/READY/CORRID, oldest strategy). State lives
  per correlation id in ``StreamingRecognizer``; freed on END and after the idle timeout.

``triton_python_backend_utils`` exists only inside the backend stub, so it is imported lazily.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np

from w2v_serve.decoding import decoder_method


def _pb():
    import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend stub

    return pb_utils


def _parameters(args: dict) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def _model_dir(args: dict, params: dict[str, str]) -> Path:
    """The exported model directory: parameter ``model_dir`` (relative to this model's folder)
    or this model's version folder."""
    here = Path(args["model_repository"])
    rel = params.get("model_dir")
    return (here / rel).resolve() if rel else here / args["model_version"]


def _error(message: str):
    pb = _pb()
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message))


def _optional_json(request, name: str) -> dict[str, Any]:
    tensor = _pb().get_input_tensor_by_name(request, name)
    if tensor is None:
        return {}
    raw = tensor.as_numpy().reshape(-1)
    if raw.size == 0 or not raw[0]:
        return {}
    value = json.loads(raw[0].decode("utf-8") if isinstance(raw[0], bytes) else str(raw[0]))
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object")
    return value


def _bytes_tensor(name: str, text: str):
    return _pb().Tensor(name, np.array([text.encode("utf-8")], dtype=np.object_))


class AcousticModel:
    """audio [B, S] f32 + lengths [B] i64 -> logits [B, T, V] (log-probs) + logit_lengths [B]."""

    def initialize(self, args: dict) -> None:
        from w2v_serve.engine import Engine, EngineOptions

        params = _parameters(args)
        # ONNX Runtime here (CUDA / TensorRT on the serving GPU); parameter "runtime" may say otherwise.
        self.engine = Engine(_model_dir(args, params),
                             EngineOptions(threads=int(params.get("threads", "0")), batch_size=64,
                                           runtime=params.get("runtime", "onnxruntime")))

    def execute(self, requests: list) -> list:
        pb = _pb()
        rows, owners, responses = [], [], [None] * len(requests)
        for i, request in enumerate(requests):
            try:
                audio = pb.get_input_tensor_by_name(request, "audio").as_numpy()
                lengths_t = pb.get_input_tensor_by_name(request, "lengths")
                lengths = lengths_t.as_numpy().reshape(-1) if lengths_t is not None else np.full(len(audio), audio.shape[1])
                if audio.ndim != 2 or len(lengths) != len(audio):
                    raise ValueError(f"audio must be [batch, samples] with one length per row; got {audio.shape}, {lengths.shape}")
                if np.any(lengths > audio.shape[1]) or np.any(lengths < 0):
                    raise ValueError("a length is negative or exceeds the row")
                for row, n in zip(audio, lengths):
                    rows.append(np.ascontiguousarray(row[: int(n)], dtype=np.float32))
                    owners.append(i)
            except Exception as e:
                responses[i] = _error(f"acoustic: {e}")
        try:
            outputs = self.engine.infer(rows) if rows else []
        except Exception as e:
            return [r or _error(f"acoustic: {e}") for r in responses]
        for i in range(len(requests)):
            if responses[i] is not None:
                continue
            mine = [o for o, owner in zip(outputs, owners) if owner == i]
            frames = max(len(o) for o in mine)
            logits = np.zeros((len(mine), frames, mine[0].shape[1]), np.float32)
            for k, o in enumerate(mine):
                logits[k, : len(o)] = o
            responses[i] = pb.InferenceResponse([
                pb.Tensor("logits", logits),
                pb.Tensor("logit_lengths", np.array([len(o) for o in mine], np.int64)),
            ])
        return responses


class _BLSSession:
    """An onnxruntime-session look-alike whose ``run`` asks the ``acoustic`` Triton model."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name

    def get_providers(self) -> list[str]:
        return [f"triton:{self.model_name}"]

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        pb = _pb()
        request = pb.InferenceRequest(
            model_name=self.model_name,
            requested_output_names=["logits", "logit_lengths"],
            inputs=[pb.Tensor("audio", feeds["audio"].astype(np.float32)),
                    pb.Tensor("lengths", feeds["lengths"].astype(np.int64).reshape(-1, 1))],
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(response.error().message())
        out = {t.name(): t.as_numpy() for t in response.output_tensors()}
        return [out[n] for n in (output_names or ["logits", "logit_lengths"])]


def _triton_engine(model_dir: Path, params: dict[str, str]):
    """An ``Engine`` whose acoustic work goes to the ``acoustic`` Triton model (parameter
    ``acoustic_model``), not a local session: offline recognition and streams' full-context
    finals run the same model the same way."""
    from w2v_serve.engine import Engine

    acoustic = params.get("acoustic_model", "acoustic")

    class _TritonEngine(Engine):
        def _open_session(self, path):
            return _BLSSession(acoustic)

    return _TritonEngine(model_dir)


def _lm_path(args: dict, params: dict[str, str]) -> Optional[str]:
    """Parameter ``lm`` (relative to the repository), else None: the model's own LM."""
    lm = params.get("lm") or None
    if lm and not Path(lm).is_absolute():
        lm = str((Path(args["model_repository"]) / lm).resolve())
    return lm


def _streaming_config(params: dict[str, str]):
    """StreamingConfig from the model's parameters (its field names; booleans as true/false)."""
    from w2v_serve.streaming import StreamingConfig

    values = {}
    for key, text in params.items():
        if key not in StreamingConfig.__dataclass_fields__:
            continue
        kind = type(getattr(StreamingConfig, key))
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"parameter {key} must be true or false, got {text!r}")
            values[key] = text.lower() in ("true", "1")
        else:
            values[key] = kind(text)
    return StreamingConfig(**values)


class OfflineModel:
    """audio [S] f32 (+ options JSON) -> transcript JSON {text, duration_s, words}."""

    def initialize(self, args: dict) -> None:
        params = _parameters(args)
        self.model_dir = _model_dir(args, params)
        self.engine = _triton_engine(self.model_dir, params)
        self.lm = _lm_path(args, params)
        # No "decoder" parameter: the runtime's rule (beam with the model's own LM when it ships one).
        self.default_key = (params.get("decoder") or None, int(params.get("beam_width", "64")))
        self._transcribers: dict = {}

    def _transcriber(self, method: Optional[str], beam_width: int):
        """One Transcriber per decoder setting, all on the same (Triton-backed) engine."""
        from w2v_serve.decoding import options_for_model
        from w2v_serve.transcribe import Transcriber

        key = (method, beam_width)
        if key not in self._transcribers:
            # Beam search: the configured LM, else the one the model ships (with its tuned weights).
            options = options_for_model(self.model_dir, method=method, beam_width=beam_width,
                                        lm=self.lm if method != "greedy" else None)
            self._transcribers[key] = Transcriber(decoder=options, engine=self.engine)
        return self._transcribers[key]

    def execute(self, requests: list) -> list:
        pb = _pb()
        responses = []
        for request in requests:
            try:
                audio = pb.get_input_tensor_by_name(request, "audio").as_numpy().astype(np.float32).reshape(-1)
                opts = _optional_json(request, "options")
                hotwords = opts.get("hotwords") or None
                method = decoder_method(opts.get("decoder"), hotwords or (), default=self.default_key[0])
                transcriber = self._transcriber(method, int(opts.get("beam_width", self.default_key[1])))
                result = transcriber.transcribe(audio, sample_rate=self.engine.sample_rate, hotwords=hotwords)
                if result.error:
                    raise ValueError(result.error)
                responses.append(pb.InferenceResponse([_bytes_tensor("transcript", json.dumps(result.to_dict()))]))
            except Exception as e:
                responses.append(_error(f"offline: {type(e).__name__}: {e}"))
        return responses


class StreamingModel:
    """One chunk of a sequence per request -> RESULTS (JSON list of partial/final results)
    and ACTIVE (open sequences held by this instance, after this batch)."""

    def initialize(self, args: dict) -> None:
        from w2v_serve.decoding import options_for_model
        from w2v_serve.streaming import StreamingRecognizer

        params = _parameters(args)
        config = json.loads(args["model_config"])
        idle_us = config.get("sequence_batching", {}).get("max_sequence_idle_microseconds", 60_000_000)
        self.idle_s = int(idle_us) / 1e6
        model_dir = _model_dir(args, params)
        # The decoder offline recognition uses (the same parameters and rule as the offline model),
        # and full-context finals through the same acoustic model: a final is the offline result.
        method = params.get("decoder") or None
        options = options_for_model(model_dir, method=method, beam_width=int(params.get("beam_width", "64")),
                                    lm=_lm_path(args, params) if method != "greedy" else None)
        self.recognizer = StreamingRecognizer(model_dir, _streaming_config(params), options,
                                              runtime=params.get("runtime", "onnxruntime"),
                                              engine=_triton_engine(model_dir, params))
        self._options: dict[int, dict] = {}
        # Triton forgets an idle sequence without telling the model: sweep our state likewise.
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, daemon=True)
        self._sweeper.start()

    def _sweep(self) -> None:
        while not self._stop.wait(min(1.0, self.idle_s / 4)):
            for corrid in self.recognizer.expire_idle(self.idle_s):
                self._options.pop(corrid, None)

    def execute(self, requests: list) -> list:
        pb = _pb()
        responses: list = [None] * len(requests)
        batch, where = [], []
        for i, request in enumerate(requests):
            try:
                corrid = int(pb.get_input_tensor_by_name(request, "CORRID").as_numpy().reshape(-1)[0])
                start = bool(pb.get_input_tensor_by_name(request, "START").as_numpy().reshape(-1)[0])
                end = bool(pb.get_input_tensor_by_name(request, "END").as_numpy().reshape(-1)[0])
                audio = pb.get_input_tensor_by_name(request, "AUDIO").as_numpy().astype(np.float32).reshape(-1)
                if start:
                    self.recognizer.start(corrid)
                    self._options[corrid] = _optional_json(request, "OPTIONS")
                elif not self.recognizer.has_stream(corrid):
                    raise ValueError(f"sequence {corrid} is not open here (no START, ended, or idle past "
                                     f"{self.idle_s:g} s)")
                batch.append((corrid, audio, end))
                where.append(i)
            except Exception as e:
                responses[i] = _error(f"streaming: {e}")
        results = self._accept(batch) if batch else []
        for (corrid, _, end), i, res in zip(batch, where, results):
            if isinstance(res, Exception):
                responses[i] = _error(f"streaming: {res}")
                continue
            if end:
                self._options.pop(corrid, None)
            responses[i] = pb.InferenceResponse([
                _bytes_tensor("RESULTS", json.dumps([r.to_dict() for r in res])),
                pb.Tensor("ACTIVE", np.array([self.recognizer.active_streams], np.int32)),
            ])
        return responses

    def _accept(self, batch: list) -> list:
        """Results (or the exception) per item; one bad stream does not fail the others.
        Streams with per-stream hotwords are decoded apart; the rest share one batched run."""
        plain = [b for b in batch if not self._options.get(b[0], {}).get("hotwords")]
        out = dict(zip([b[0] for b in plain], self.recognizer.accept_each(plain) if plain else []))
        for b in batch:
            if b[0] not in out:
                hotwords = self._options.get(b[0], {}).get("hotwords")
                out[b[0]] = self.recognizer.accept_each([b], hotwords=hotwords)[0]
        return [out[b[0]] for b in batch]

    def finalize(self) -> None:
        self._stop.set()
