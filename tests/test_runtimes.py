"""Runtimes and precisions: the OpenVINO session adapter against ONNX Runtime, runtime selection,
streaming under OpenVINO, and the precision check (w2v_serve.sessions, engine, precision).

Tolerance of OpenVINO f32 against ONNX Runtime on the same graph: 1e-4 absolute on
log-probabilities (measured about 1e-6 on the tiny model; both are fp32 with different kernels).
Tests that need OpenVINO skip when it is not installed; the error for forcing it does not.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest

from tests.conftest import speech_like
from tests.serve_helpers import tiny_model_dir
from w2v_serve import sessions
from w2v_serve.engine import Engine, EngineOptions, resolve_precision
from w2v_serve.model_dir import PRECISION_CHECK_NAME, ModelDirectory, write_card
from w2v_serve.sessions import EngineError, open_session, resolve_runtime

ATOL = 1e-4
needs_openvino = pytest.mark.skipif(not sessions.openvino_available(), reason="openvino is not installed")


def _batch():
    rows = [speech_like(n, seed=n, scale=0.3) for n in (16000, 9001)]
    audio = np.zeros((2, 16000), np.float32)
    for row, a in zip(audio, rows):
        row[: len(a)] = a
    return {"audio": audio, "lengths": np.array([16000, 9001], np.int64)}


# ---------------------------------------------------------------------------- adapter
@needs_openvino
def test_openvino_session_gives_onnxruntime_logits_and_its_interface():
    path = tiny_model_dir("attention") / "model.onnx"
    ov, ort = open_session(path, runtime="openvino", threads=1), open_session(path, runtime="onnxruntime")
    assert [i.name for i in ov.get_inputs()] == [i.name for i in ort.get_inputs()] == ["audio", "lengths"]
    assert [o.name for o in ov.get_outputs()] == ["logits", "logit_lengths"]
    assert ov.get_providers() == [sessions.OPENVINO_PROVIDER] and ov.threads == 1
    feeds = _batch()
    lengths, logits = ov.run(["logit_lengths", "logits"], feeds)     # any order of outputs
    ref_logits, ref_lengths = ort.run(None, feeds)
    np.testing.assert_array_equal(lengths, ref_lengths)
    np.testing.assert_allclose(logits, ref_logits, atol=ATOL)
    # Outputs belong to the caller: the next run (a request reused) does not overwrite them.
    kept = logits.copy()
    ov.run(None, {"audio": feeds["audio"][::-1].copy(), "lengths": feeds["lengths"][::-1].copy()})
    np.testing.assert_array_equal(logits, kept)
    with pytest.raises(EngineError, match="no output"):
        ov.run(["nope"], feeds)


@needs_openvino
def test_openvino_session_is_safe_across_threads():
    from concurrent.futures import ThreadPoolExecutor

    path = tiny_model_dir("attention") / "model.onnx"
    ov = open_session(path, runtime="openvino", threads=1)
    feeds = _batch()
    ref = ov.run(["logits"], feeds)[0]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: ov.run(["logits"], feeds)[0], range(8)))
    for out in outs:
        np.testing.assert_array_equal(out, ref)


@needs_openvino
@pytest.mark.skipif(not sessions.openvino_supports_bf16(), reason="this CPU has no native bf16")
def test_openvino_bf16_sessions_keep_openvinos_form_of_the_graph_and_run_it_unchanged(tmp_path, monkeypatch):
    """bf16 compilations are never cached; their graph is, in OpenVINO's form (IR) under
    ``openvino-ir/KEY``: a second session reads it and gives bitwise the first one's output; a
    damaged entry is replaced; a changed model file gets an entry of its own; without ``cache`` no
    entry is made."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sessions, "OPENVINO_CACHE_MIN_BYTES", 1)
    model = tmp_path / "model.onnx"
    shutil.copy(tiny_model_dir("attention") / "model.onnx", model)
    root = tmp_path / "cache" / "w2v" / "openvino-ir"
    feeds = _batch()
    first = open_session(model, runtime="openvino", threads=1, precision="bf16").run(["logits"], feeds)[0]
    entries = list(root.iterdir())
    assert [e.name for e in entries] == [sessions._file_key(model)]
    xml = entries[0] / "model.xml"
    assert xml.is_file() and (entries[0] / "model.bin").is_file()
    assert not (tmp_path / "cache" / "w2v" / "openvino").exists()     # no compiled bf16 blob

    read_back = open_session(model, runtime="openvino", threads=1, precision="bf16").run(["logits"], feeds)[0]
    np.testing.assert_array_equal(read_back, first)

    xml.write_text("<net broken")
    repaired = open_session(model, runtime="openvino", threads=1, precision="bf16").run(["logits"], feeds)[0]
    np.testing.assert_array_equal(repaired, first)
    assert "<net broken" not in xml.read_text()

    abandoned, writing = root / ".abandoned.x", root / ".writing.x"   # staging folders of other processes
    abandoned.mkdir(), writing.mkdir()
    old = time.time() - sessions.STAGING_MAX_AGE_S - 60
    os.utime(abandoned, (old, old))
    model.write_bytes(model.read_bytes())                              # a new modification time
    open_session(model, runtime="openvino", threads=1, precision="bf16")
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == [".writing.x"]
    assert len([p for p in root.iterdir() if not p.name.startswith(".")]) == 2

    shutil.rmtree(root)
    sessions.OpenVINOSession(model, threads=1, precision="bf16", cache=False)
    assert not root.exists()


@needs_openvino
def test_openvino_session_releases_its_buffers_only_when_no_run_is_in_progress():
    """``release_memory`` frees the compiled model's intermediate buffers between runs (outputs
    after it are unchanged) and refuses while another thread's run is in progress;
    ``release_runtime_memory`` releases every idle OpenVINO session of the process."""
    import threading

    path = tiny_model_dir("attention") / "model.onnx"
    ov = open_session(path, runtime="openvino", threads=1)
    long = {"audio": speech_like(16000 * 60, seed=5)[None], "lengths": np.array([16000 * 60], np.int64)}
    ref = ov.run(["logits"], long)[0]
    assert ov.release_memory()
    np.testing.assert_array_equal(ov.run(["logits"], long)[0], ref)
    assert sessions.release_runtime_memory() >= 1

    done, refused, outs = threading.Event(), [], []

    def runs():
        try:
            for _ in range(10):
                outs.append(ov.run(["logits"], long)[0])
        finally:
            done.set()
    worker = threading.Thread(target=runs)
    worker.start()
    while not done.is_set():
        if not ov.release_memory():
            refused.append(True)
    worker.join()
    assert refused and ov.release_memory() and len(outs) == 10
    for out in outs:
        np.testing.assert_array_equal(out, ref)


# ---------------------------------------------------------------------------- selection
def test_runtime_selection_auto_and_forced(monkeypatch):
    assert resolve_runtime("onnxruntime") == "onnxruntime"
    assert resolve_runtime("auto") == ("openvino" if sessions.openvino_available() else "onnxruntime")
    # A GPU provider wanted and present: auto keeps ONNX Runtime (CUDA / TensorRT).
    monkeypatch.setattr(sessions, "gpu_providers_present", lambda providers=None: ["CUDAExecutionProvider"])
    assert resolve_runtime("auto") == "onnxruntime"
    with pytest.raises(EngineError, match="unknown runtime"):
        resolve_runtime("tensorflow")


def test_forcing_openvino_when_it_is_not_installed_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(sessions, "openvino_available", lambda: False)
    assert resolve_runtime("auto") == "onnxruntime"
    with pytest.raises(EngineError, match=r"pip install 'w2v\[openvino\]'"):
        Engine(tiny_model_dir("attention"), EngineOptions(runtime="openvino"))


def test_precision_needs_its_runtime_and_its_cpu():
    with pytest.raises(EngineError, match="openvino"):
        Engine(tiny_model_dir("attention"), EngineOptions(runtime="onnxruntime", variant="bf16"))
    with pytest.raises(EngineError, match="no 'int8' graph variant"):
        Engine(tiny_model_dir("attention"), EngineOptions(runtime="onnxruntime", variant="int8"))


@needs_openvino
def test_engine_under_openvino_equals_onnxruntime():
    model = tiny_model_dir("attention")
    ov = Engine(model, EngineOptions(runtime="openvino"))
    ort = Engine(model, EngineOptions(runtime="onnxruntime"))
    assert ov.providers == (sessions.OPENVINO_PROVIDER,) and ov.precision == "fp32"
    audio = [speech_like(n, seed=n) for n in (16000, 9000, 23456)]
    for a, b in zip(ov.infer(audio), ort.infer(audio)):
        np.testing.assert_allclose(a, b, atol=ATOL)


@needs_openvino
def test_streaming_under_openvino_gives_onnxruntime_transcripts():
    from w2v_serve.streaming import StreamingConfig, StreamingRecognizer

    model = tiny_model_dir("local")
    cfg = StreamingConfig(chunk_ms=200, right_context_ms=100, endpoint_ms=400)
    audio = np.concatenate([speech_like(16000, seed=1, scale=0.5), np.zeros(16000, np.float32),
                            speech_like(12000, seed=2, scale=0.5)])

    def finals(runtime: str) -> list[str]:
        rec = StreamingRecognizer(model, cfg, runtime=runtime)
        rec.start("s")
        out = []
        for k in range(0, len(audio), 1600):
            out += rec.accept("s", audio[k:k + 1600], end=k + 1600 >= len(audio))
        return [r.text for r in out if r.is_final]

    ov = finals("openvino")
    assert ov == finals("onnxruntime") and any(ov)


# ---------------------------------------------------------------------------- precision check
def _with_corrupted_int8(tmp_path, nan: bool = False) -> ModelDirectory:
    """A copy of the tiny model whose "int8" variant is its fp32 graph with every weight jittered
    by 50% (a precision that loses the answers), or with one weight NaN (``nan``: a precision whose
    output is NaN, as OpenVINO's bf16 gave for the bundled model on an AMX Xeon)."""
    import onnx
    from onnx import numpy_helper

    src = tiny_model_dir("attention")
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    graph = onnx.load(str(dst / "model.onnx"))
    rng = np.random.default_rng(0)
    for init in graph.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.size > 16:
            if nan:
                w = w.copy()
                w.flat[0] = np.nan
            else:
                w = (w * (1 + 0.5 * rng.standard_normal(w.shape))).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(graph, str(dst / "model.bad.onnx"))
    model = ModelDirectory.load(dst)
    model.card.variants["int8"] = {**model.card.variants["fp32"], "model": "model.bad.onnx"}
    write_card(dst, model.card)
    return ModelDirectory.load(dst)


def test_precision_check_rejects_a_precision_that_changes_the_answers(tmp_path):
    from w2v_serve.precision import check_precisions, write_record

    model = _with_corrupted_int8(tmp_path)
    audios = [speech_like(n, seed=n, scale=0.3) for n in (16000, 24000)]
    record = check_precisions(model, audios, runtimes=["onnxruntime"], precisions=["fp32", "bf16", "int8"],
                              threads=1, repeats=1)
    results = record["results"]["onnxruntime"]
    assert results["fp32"]["passed"] and results["fp32"]["agreement"] == 1.0
    assert not results["int8"]["passed"] and results["int8"]["agreement"] < 0.995
    assert results["bf16"] == {"available": False, "reason": "bf16 runs on the openvino runtime only",
                               "passed": False}
    assert record["default"]["onnxruntime"] == "fp32"
    # Even when the rejected one measured fastest, the engine's default stays on what passed.
    results["int8"]["rtf"] = results["fp32"]["rtf"] / 10
    write_record(model, record)
    assert [r["threshold"] for r in ModelDirectory.load(model.path).precision_checks] == [0.995]
    assert Engine(model, EngineOptions(runtime="onnxruntime")).precision == "fp32"
    # And when it passed and is fastest, it is the default.
    results["int8"]["passed"] = True
    write_record(model, record)
    assert resolve_precision(ModelDirectory.load(model.path), "auto", "onnxruntime") == "int8"
    assert resolve_precision(ModelDirectory.load(model.path), "auto", "openvino") == "fp32"   # no record for it


def test_precision_check_fails_a_precision_with_nan_output_instead_of_crashing(tmp_path):
    from w2v_serve.decoding import CTCDecoder, DecoderError, DecoderOptions
    from w2v_serve.precision import check_precisions

    model = _with_corrupted_int8(tmp_path, nan=True)
    audios = [speech_like(16000, seed=3, scale=0.3)]
    record = check_precisions(model, audios, runtimes=["onnxruntime"], precisions=["fp32", "int8"], threads=1,
                              repeats=1)
    bad = record["results"]["onnxruntime"]["int8"]
    assert not bad["passed"] and bad["nan_values"] > 0 and "NaN" in bad["reason"]
    assert record["default"]["onnxruntime"] == "fp32"
    # Decoding NaN log-probs is a clear error, not pyctcdecode's "max() arg is an empty sequence".
    nan_out = Engine(model, EngineOptions(runtime="onnxruntime", variant="int8")).log_probs(audios[0])
    with pytest.raises(DecoderError, match="NaN"):
        CTCDecoder(model.vocab, DecoderOptions(method="greedy")).decode(nan_out)


def test_precision_check_keeps_a_record_per_kind_of_cpu(tmp_path, monkeypatch):
    """A check on a second kind of CPU adds its record instead of replacing the first one's; a
    rerun on the same kind replaces its own. On a CPU never checked a precision counts as passed
    only where it passed on every CPU checked (int8 and bf16 kernels differ by CPU)."""
    from w2v_serve import engine as engine_module
    from w2v_serve.engine import choose_runtime_and_precision, precision_record
    from w2v_serve.precision import write_record

    model = _with_corrupted_int8(tmp_path)
    amd = {"cpu": "AMD EPYC", "cpu_flags": ["avx2"]}
    xeon = {"cpu": "Intel(R) Xeon(R) Processor", "cpu_flags": ["amx_bf16", "avx2", "avx512_bf16"]}

    def record(machine, int8_passed, note):
        return {"format": "w2v-precision-check", "version": 1, "machine": {**machine, "cores": 2}, "note": note,
                "results": {"onnxruntime": {"fp32": {"available": True, "passed": True, "rtf": 0.02},
                                            "int8": {"available": True, "passed": int8_passed, "rtf": 0.01}}}}

    # A file of the first format (one bare record) reads as one record and is kept beside the new one.
    (model.path / PRECISION_CHECK_NAME).write_text(json.dumps(record(amd, True, "first")))
    write_record(model, record(xeon, False, "xeon"))
    write_record(model, record(amd, True, "amd again"))
    records = ModelDirectory.load(model.path).precision_checks
    assert [r["note"] for r in records] == ["xeon", "amd again"]

    def on(machine):
        monkeypatch.setattr(engine_module, "machine_signature", lambda: dict(machine))
        loaded = ModelDirectory.load(model.path)
        return precision_record(loaded), choose_runtime_and_precision(loaded, "onnxruntime")[1]

    assert on(amd)[0]["note"] == "amd again" and on(amd)[1] == "int8"
    assert on(xeon)[0]["note"] == "xeon" and on(xeon)[1] == "fp32"
    merged, precision = on({"cpu": "some other CPU", "cpu_flags": []})
    assert precision == "fp32" and merged["results"]["onnxruntime"]["fp32"]["passed"]
    assert not engine_module.measured_here(ModelDirectory.load(model.path))
    # The merge does not touch the records themselves.
    assert ModelDirectory.load(model.path).precision_checks[1]["results"]["onnxruntime"]["int8"]["passed"]


def test_precision_check_threshold_rejects_everything_above_one(tmp_path):
    from w2v_serve.precision import check_precisions

    record = check_precisions(tiny_model_dir("attention"), [speech_like(16000, seed=4)], runtimes=["onnxruntime"],
                              precisions=["fp32"], threshold=1.01, repeats=1)
    assert not record["results"]["onnxruntime"]["fp32"]["passed"]
    assert record["default"]["onnxruntime"] == "fp32"        # nothing passed: the safe fallback


def test_runtime_and_precision_flags_are_shared(tmp_path):
    from w2v_serve.cli import build_parser

    parser = build_parser()
    for argv in (["transcribe", "x.wav"], ["eval", "m.tsv", "--model", "M"], ["serve"]):
        args = parser.parse_args([*argv, "--runtime", "onnxruntime"])
        assert args.runtime == "onnxruntime"
    args = parser.parse_args(["transcribe", "x.wav", "--precision", "int8"])
    assert (args.runtime, args.variant) == ("auto", "int8")
    assert parser.parse_args(["transcribe", "x.wav", "--variant", "fp16"]).variant == "fp16"
    with pytest.raises(SystemExit):
        parser.parse_args(["transcribe", "x.wav", "--runtime", "tvm"])


def test_agreement_counts_the_frames_the_reference_decides():
    """Hand-worked: of five frames the reference decides four (margins 2.08, 0.69, 0.51 and 0.5
    nats) and not the fifth (0.1); the other precision flips the near-tie and one decided frame."""
    from w2v_serve.precision import DECIDED_MARGIN, MIN_DECIDED_FRAMES, argmax_agreement, decided_agreement

    assert DECIDED_MARGIN == 0.5
    ref = np.log(np.array([[0.8, 0.1, 0.1], [0.1, 0.6, 0.3], [0.3, 0.2, 0.5]]))
    ref = np.concatenate([ref, [[-2.0, -4.0, -2.5], [-1.0, -1.1, -3.0]]])   # margins 0.5 and 0.1
    other = ref.copy()
    other[4] = [-1.1, -1.0, -3.0]              # the near-tie flips
    other[1] = [-1.0, -2.0, -0.5]              # a decided frame flips (margin ln(0.6/0.3) = 0.69)
    assert argmax_agreement([ref], [other]) == (3, 5)
    assert argmax_agreement([ref], [other], margin=0.5) == (3, 4)
    assert argmax_agreement([ref], [other], margin=3.0) == (0, 0)
    # Too few decided frames: every frame counts.
    assert decided_agreement([ref], [other]) == {"agreement": 0.6, "frames": 5, "decided_frames": 5,
                                                 "agreement_all_frames": 0.6}
    many_ref, many_other = [ref] * MIN_DECIDED_FRAMES, [other] * MIN_DECIDED_FRAMES
    assert decided_agreement(many_ref, many_other) == {"agreement": 0.75, "frames": 5 * MIN_DECIDED_FRAMES,
                                                       "decided_frames": 4 * MIN_DECIDED_FRAMES,
                                                       "agreement_all_frames": 0.6}
