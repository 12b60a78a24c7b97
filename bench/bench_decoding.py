"""Decoding: the search's cost, its build cost, streaming capacity, and the whole batch job, side
by side in one run, with the bundled model (beam 64 + its LM, the default) on espeak-ng speech.

* ``batch``     - CPU seconds of decoding per audio second over the same log-probabilities
                  (the model's own on held-out voices): this search, pyctcdecode 0.5's own
                  ``decode_beams`` over the same KenLM, greedy; WER of
                  each against the sentences, and what each gives for 10 s of silence.
* ``streaming`` - decoding CPU per audio second of a stream cut in chunks: the incremental search
                  (each chunk advances it, a partial per chunk, a final) against re-decoding the
                  open segment at every chunk (pyctcdecode has no state to keep between calls).
* ``build``     - building a beam decoder: the first one (loads the LM), one more with other
                  weights (shares it): CPU seconds and resident memory added.
* ``capacity``  - concurrent real-time streams through ``StreamingRecognizer`` (default window,
                  beam + LM): N streams send 160 ms pieces at real-time pace to one worker that
                  takes whatever has arrived in one ``accept_many`` (as the service's inference
                  worker does); partial latency = result time - arrival of the piece that
                  completed the chunk's look-ahead. With and without the full-context final pass.
* ``wer``       - WER of the same decoders on a larger held-out set (300 sentences, same voices;
                  model run once, each decoder once): where this search and pyctcdecode
                  disagree, which one is closer to the sentence.
* ``job``       - ``Transcriber`` over the WAV files: beam + LM (0 and 2 decode workers) vs greedy,
                  wall and CPU seconds, medians of repeats.

The machine may be shared: the load average is recorded at the start and the end.

    python -m bench decoding [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

CACHE = Path(tempfile.gettempdir()) / "w2v-bench-decoding-v1"
PIECE_S = 0.16
# flashlight-text's operating point, chosen on 30 of these utterances: the LM weight (on log10
# KenLM scores) where its WER meets the search's, the tightest token/threshold pruning that kept it
# (threshold 25 / all 30 tokens per frame: same WER at 13x the CPU; LM weight alpha x ln 10 =
# 1.15: WER 12.2%).
FLASHLIGHT = {"lm_weight": 2.3, "beam_threshold": 10.0, "beam_size_token": 4}
P95_GOAL_MS = 500.0


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _corpus(n: int):
    """n espeak-ng sentences (Debian fortunes) in the model card's held-out voices, as WAV files."""
    import soundfile as sf

    from training.synth import collect_sentences
    from w2v_serve.model_dir import ModelDirectory
    from w2v_serve.transcribe import _bundled_model

    model = ModelDirectory.load(_bundled_model())
    voices = model.card.extra["data"]["held_out_voices"]
    CACHE.mkdir(parents=True, exist_ok=True)
    index = CACHE / f"corpus{n}.json"
    if not index.exists():
        rng = random.Random(7)
        sentences = rng.sample(collect_sentences(), n)
        rows = []
        for i, text in enumerate(sentences):
            wav = CACHE / f"u{n}_{i}.wav"
            subprocess.run(["espeak-ng", "-v", voices[i % len(voices)], "-s", str(rng.randint(140, 190)),
                            "-w", str(wav), text], check=True, capture_output=True)
            rows.append({"wav": str(wav), "text": text})
        index.write_text(json.dumps(rows))
    rows = json.loads(index.read_text())
    audio = [sf.read(r["wav"], dtype="float32") for r in rows]
    return rows, audio


def _wer(refs, hyps) -> float:
    from w2v_serve.scoring import error_counts

    c = error_counts(refs, hyps)
    return round(c["word_errors"] / c["words"], 4)


def _pyctcdecode_stock(labels, options):
    """pyctcdecode 0.5's own search over the same KenLM model and word list (the sorted-list
    prefix index in place of its character trie, as the project's wrapper used)."""
    from pyctcdecode import Alphabet, BeamSearchDecoderCTC, LanguageModel
    from pyctcdecode.language_model import _prepare_unigram_set

    from w2v_serve.beam_search import PrefixIndex
    from w2v_serve.decoding import _loaded_lm
    from w2v_serve.lm import unigrams_path_for

    shared = _loaded_lm(Path(options.lm), unigrams_path_for(options.lm))
    lm = LanguageModel(shared._kenlm_model, None, alpha=options.alpha, beta=options.beta)
    lm._unigram_set = _prepare_unigram_set(sorted(shared._unigram_set), shared._kenlm_model)
    lm._char_trie = PrefixIndex(lm._unigram_set)
    return BeamSearchDecoderCTC(Alphabet.build_alphabet(labels), lm)


def _deciders(engine, model_opts) -> tuple[list, Optional[dict]]:
    """(name, log-probs -> text) for this search, pyctcdecode's own, greedy and (if installed)
    flashlight-text; and flashlight-text's build cost."""
    from w2v_serve.decoding import CTCDecoder

    vocab = engine.model.vocab
    beam = CTCDecoder(vocab, model_opts, frame_seconds=engine.frame_seconds)
    greedy = CTCDecoder(vocab, frame_seconds=engine.frame_seconds)
    stock = _pyctcdecode_stock(vocab.pyctcdecode_labels(), model_opts)

    def stock_text(lp):
        return " ".join(stock.decode_beams(lp, beam_width=model_opts.beam_width, beam_prune_logp=-10.0,
                                           token_min_logp=-5.0)[0][0].split())

    deciders = [("search", lambda lp: beam.decode(lp).text), ("pyctcdecode", stock_text),
                ("greedy", lambda lp: greedy.decode(lp).text)]
    build = None
    try:
        fl_decode, _, fl_build = _flashlight(vocab, model_opts)
        deciders.append(("flashlight", fl_decode))
        build = {"cpu_s": round(fl_build[0], 3), "rss_mb": round(fl_build[1], 1)}
        print(f"flashlight-text: lexicon trie + LM built in {fl_build[0]:.2f} CPU-s, +{fl_build[1]:.0f} MB", flush=True)
    except ImportError:
        print("flashlight-text is not installed: left out", flush=True)
    return deciders, build


def bench_batch(engine, rows, audio, deciders) -> dict:
    from w2v_serve.audio import resample
    from w2v_serve.scoring import normalize_for_scoring as norm

    lps = [engine.log_probs(resample(a, r, 16000)) for a, r in audio]
    seconds = sum(len(lp) for lp in lps) * engine.frame_seconds
    silence = engine.log_probs(np.zeros(160000, np.float32))
    refs = [norm(r["text"]) for r in rows]
    out = {"audio_s": round(seconds, 1), "utterances": len(lps)}
    for name, fn in deciders:
        cpu = []
        for _ in range(3):
            t = time.process_time()
            hyps = [fn(lp) for lp in lps]
            cpu.append(time.process_time() - t)
        out[name] = {"cpu_s_per_audio_s": round(statistics.median(cpu) / seconds, 5),
                     "wer": _wer(refs, [norm(h) for h in hyps]), "silence_10s": fn(silence)}
        print(f"batch {name:>12}: {out[name]['cpu_s_per_audio_s']:.5f} CPU-s per audio s, "
              f"WER {out[name]['wer']:.2%}, 10 s of silence -> {out[name]['silence_10s']!r}", flush=True)
    return out, lps


def _flashlight(vocab, options):
    """flashlight-text's LexiconDecoder (the C++ decoder torchaudio wraps) over the same KenLM and
    word list: lexicon trie of the LM's words spelled in the model's characters, word score
    beta, words outside the lexicon refused, best-alignment merging, ``FLASHLIGHT`` settings.
    Returns (decode, stream, (build CPU-s, +MB))."""
    from flashlight.lib.text.decoder import (CriterionType, LexiconDecoder, LexiconDecoderOptions, SmearingMode,
                                             Trie)
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    from w2v_serve.lm import read_unigrams, unigrams_path_for

    r0, t = _rss_mb(), time.process_time()
    labels = [f"#{i}" if i in (vocab.blank_id,) else tok for i, tok in enumerate(vocab.tokens)]
    tokens = Dictionary(labels)
    chars = set(vocab.tokens)
    lexicon = {w: list(w) for w in sorted(read_unigrams(unigrams_path_for(options.lm))) if set(w) <= chars}
    words = Dictionary(list(lexicon) + ["<unk>"])
    lm = KenLM(options.lm, words)
    delim = vocab.word_delimiter_id
    trie = Trie(len(labels), delim)
    start = lm.start(False)
    for w, spelling in lexicon.items():
        idx = words.get_index(w)
        _, score = lm.score(start, idx)
        trie.insert([tokens.get_index(c) for c in spelling], idx, score)
    trie.smear(SmearingMode.MAX)
    opts = LexiconDecoderOptions(beam_size=options.beam_width, unk_score=float("-inf"), sil_score=0.0,
                                 log_add=False, criterion_type=CriterionType.CTC, word_score=options.beta,
                                 **FLASHLIGHT)
    decoder = LexiconDecoder(opts, trie, lm, delim, vocab.blank_id, words.get_index("<unk>"), [], False)
    build = (time.process_time() - t, _rss_mb() - r0)
    tail = np.full((1, len(labels)), -30.0, np.float32)
    tail[0, delim] = 0.0          # the model emits no delimiter after the last word: one frame of it

    def text(hyp) -> str:
        return " ".join(words.get_entry(i) for i in hyp.words if i >= 0)

    def decode(lp: np.ndarray) -> str:
        e = np.ascontiguousarray(np.concatenate([lp, tail]), dtype=np.float32)
        return text(decoder.decode(e.ctypes.data, e.shape[0], e.shape[1])[0])

    def stream(lp: np.ndarray, chunk: int) -> str:
        decoder.decode_begin()
        for k in range(0, len(lp), chunk):
            e = np.ascontiguousarray(lp[k:k + chunk], dtype=np.float32)
            decoder.decode_step(e.ctypes.data, e.shape[0], e.shape[1])
            text(decoder.get_best_hypothesis())
        e = np.ascontiguousarray(tail)
        decoder.decode_step(e.ctypes.data, 1, e.shape[1])
        decoder.decode_end()
        return text(decoder.get_all_final_hypothesis()[0])

    return decode, stream, build


def bench_wer(engine, deciders, n: int) -> dict:
    """WER of each decoder over n held-out sentences; per sentence where this search and
    pyctcdecode differ, the word errors of each."""
    from w2v_serve.audio import resample
    from w2v_serve.scoring import error_counts
    from w2v_serve.scoring import normalize_for_scoring as norm

    rows, audio = _corpus(n)
    lps = [engine.log_probs(resample(a, r, 16000)) for a, r in audio]
    refs = [norm(r["text"]) for r in rows]
    hyps = {name: [norm(fn(lp)) for lp in lps] for name, fn in deciders}
    out: dict = {"utterances": n, "words": error_counts(refs, hyps["search"])["words"],
                 "audio_s": round(sum(len(lp) for lp in lps) * engine.frame_seconds, 1)}
    for name in hyps:
        out[name] = _wer(refs, hyps[name])
    better = worse = same = 0
    for ref, a, b in zip(refs, hyps["search"], hyps["pyctcdecode"]):
        if a != b:
            ea, eb = (error_counts([ref], [h])["word_errors"] for h in (a, b))
            better += ea < eb
            worse += ea > eb
            same += ea == eb
    out["search_vs_pyctcdecode"] = {"differ": better + worse + same, "search_closer": better,
                                    "pyctcdecode_closer": worse, "as_close": same}
    print(f"WER over {n} sentences ({out['words']} words): " +
          ", ".join(f"{name} {out[name]:.2%}" for name in hyps) +
          f"; search vs pyctcdecode: {out['search_vs_pyctcdecode']}", flush=True)
    return out


def bench_streaming_decode(engine, lps, model_opts, chunk_frames: int = 32) -> dict:
    from w2v_serve.decoding import CTCDecoder

    dec = CTCDecoder(engine.model.vocab, model_opts, frame_seconds=engine.frame_seconds)
    seconds = sum(len(lp) for lp in lps) * engine.frame_seconds
    same = 0
    t = time.process_time()
    finals = []
    for lp in lps:
        state = dec.begin()
        for k in range(0, len(lp), chunk_frames):
            dec.advance(state, lp[k:k + chunk_frames])
            dec.partial(state)
        finals.append(dec.finish(state).text)
    incremental = time.process_time() - t
    t = time.process_time()
    for lp, final in zip(lps, finals):
        for k in range(chunk_frames, len(lp) + chunk_frames, chunk_frames):
            text = dec.decode(lp[:k]).text
        same += text == final
    redecode = time.process_time() - t
    fl = None
    try:
        _, fl_stream, _ = _flashlight(engine.model.vocab, model_opts)
        t = time.process_time()
        for lp in lps:
            fl_stream(lp, chunk_frames)
        fl = round((time.process_time() - t) / seconds, 5)
    except ImportError:
        pass
    out = {"chunk_ms": chunk_frames * 20, "incremental_cpu_s_per_audio_s": round(incremental / seconds, 5),
           "flashlight_incremental_cpu_s_per_audio_s": fl,
           "redecode_cpu_s_per_audio_s": round(redecode / seconds, 5),
           "finals_equal_to_offline_decode": f"{same}/{len(lps)}"}
    print(f"streaming decode ({out['chunk_ms']} ms chunks): incremental {out['incremental_cpu_s_per_audio_s']:.5f}, "
          f"re-decode per chunk {out['redecode_cpu_s_per_audio_s']:.5f}, flashlight-text incremental {fl} CPU-s per audio s; "
          f"finals equal: {out['finals_equal_to_offline_decode']}", flush=True)
    return out


def bench_build(vocab, model_opts) -> dict:
    """In a fresh process, so the LM is not loaded yet."""
    code = f"""
import json, time, resource
from dataclasses import replace
from pathlib import Path
from w2v_serve.decoding import CTCDecoder, options_for_model
from w2v_serve.model_dir import ModelDirectory
from w2v_serve.transcribe import _bundled_model
from bench.bench_decoding import _rss_mb
m = ModelDirectory.load(_bundled_model()); o = options_for_model(m.path)
r0 = _rss_mb(); t = time.process_time(); w = time.perf_counter()
CTCDecoder(m.vocab, o)
first = (time.process_time() - t, time.perf_counter() - w, _rss_mb() - r0)
r1 = _rss_mb(); t = time.process_time()
CTCDecoder(m.vocab, replace(o, alpha=1.2, beta=0.0, beam_width=16))
second = (time.process_time() - t, _rss_mb() - r1)
print(json.dumps({{"first_cpu_s": round(first[0], 3), "first_wall_s": round(first[1], 3), "first_rss_mb": round(first[2], 1),
                  "another_weights_cpu_s": round(second[0], 4), "another_weights_rss_mb": round(second[1], 1)}}))
"""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    import sys

    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    env=env).stdout.strip().splitlines()[-1])
    print(f"build: first beam decoder (loads the LM) {out['first_cpu_s']} CPU-s, +{out['first_rss_mb']} MB; "
          f"another with other weights {out['another_weights_cpu_s']} CPU-s, +{out['another_weights_rss_mb']} MB",
          flush=True)
    return out


def _speech_stream(audio, seconds: float, seed: int) -> np.ndarray:
    from w2v_serve.audio import resample

    rng = np.random.default_rng(seed)
    parts, n = [], 0
    while n < seconds * 16000:
        a, r = audio[int(rng.integers(len(audio)))]
        a = resample(a, r, 16000)
        parts += [a, np.zeros(int(16000 * 0.3), np.float32)]
        n += len(a) + 4800
    return np.concatenate(parts)[: int(seconds * 16000)]


def _capacity_run(model_dir, model_opts, config, streams: list[np.ndarray]) -> dict:
    """N real-time streams into one worker; partial latencies (ms) and the worker's busy share."""
    from w2v_serve.streaming import StreamingRecognizer

    rec = StreamingRecognizer(model_dir, config, model_opts)
    rec.start("warm")               # opens the sessions and the full-context engine
    rec.accept("warm", streams[0][:32000], end=True)
    piece = int(PIECE_S * 16000)
    n = len(streams)
    offsets = [i * PIECE_S / n for i in range(n)]       # streams start staggered within a piece
    pieces = [(offsets[i] + (k + 1) * PIECE_S, i, k) for i in range(n) for k in range(-(-len(streams[i]) // piece))]
    pieces.sort()
    for i in range(n):
        rec.start(i)
    latencies, busy = [], 0.0
    t0 = time.perf_counter()
    p = 0
    while p < len(pieces):
        now = time.perf_counter() - t0
        if pieces[p][0] > now:
            time.sleep(pieces[p][0] - now)
            continue
        batch = {}
        while p < len(pieces) and pieces[p][0] <= time.perf_counter() - t0:
            at, i, k = pieces[p]
            prev = batch.get(i)
            audio = streams[i][k * piece:(k + 1) * piece]
            end = (k + 1) * piece >= len(streams[i])
            batch[i] = (np.concatenate([prev[0], audio]) if prev else audio, end, at)
            p += 1
        s = time.perf_counter()
        results = rec.accept_many([(i, a, end) for i, (a, end, _) in batch.items()])
        done = time.perf_counter()
        busy += done - s
        for (i, (_, end, at)), res in zip(batch.items(), results):
            if any(not r.is_final for r in res) and not end:
                latencies.append((done - t0 - at) * 1000)
    wall = time.perf_counter() - t0
    return {"partial_p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
            "partial_p95_ms": round(float(np.percentile(latencies, 95)), 1) if latencies else None,
            "worker_busy": round(busy / wall, 3)}


def bench_capacity(model_dir, model_opts, audio, seconds: float, counts) -> dict:
    from w2v_serve.streaming import StreamingConfig

    out = {}
    for final_pass in (True, False):
        config = StreamingConfig(full_context_final=final_pass)
        key = "full_context_final" if final_pass else "first_pass_final"
        rows, best = {}, 0
        for n in counts:
            streams = [_speech_stream(audio, seconds, seed=100 + i) for i in range(n)]
            r = _capacity_run(model_dir, model_opts, config, streams)
            rows[n] = r
            ok = r["partial_p95_ms"] is not None and r["partial_p95_ms"] <= P95_GOAL_MS
            print(f"capacity ({key}): {n:>3} streams: partial p50/p95 {r['partial_p50_ms']}/{r['partial_p95_ms']} ms, "
                  f"worker busy {r['worker_busy']:.0%} {'ok' if ok else 'over the goal'}", flush=True)
            if ok:
                best = n
            else:
                break
        out[key] = {"streams": rows, "max_streams_p95_under_500ms": best}
    return out


def bench_job(rows, repeats: int) -> dict:
    from w2v_serve.decoding import options_for_model
    from w2v_serve.transcribe import Transcriber, _bundled_model

    model = _bundled_model()
    paths = [r["wav"] for r in rows]
    out = {}
    for name, opts, workers in (("greedy", options_for_model(model, method="greedy", no_lm=True), 0),
                                ("beam_lm", options_for_model(model), 0),
                                ("beam_lm_2_workers", options_for_model(model), 2)):
        walls, cpus = [], []
        for _ in range(repeats):
            c0 = resource.getrusage(resource.RUSAGE_SELF)
            c0k = resource.getrusage(resource.RUSAGE_CHILDREN)
            w = time.perf_counter()
            with Transcriber(model, decoder=opts, decode_workers=workers) as t:
                for _r in t.transcribe_iter(paths):
                    pass
            walls.append(time.perf_counter() - w)
            c1 = resource.getrusage(resource.RUSAGE_SELF)
            c1k = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(sum(getattr(c1, f) - getattr(c0, f) + getattr(c1k, f) - getattr(c0k, f)
                            for f in ("ru_utime", "ru_stime")))
        out[name] = {"wall_s": round(statistics.median(walls), 3), "cpu_s": round(statistics.median(cpus), 3)}
    for name in ("beam_lm", "beam_lm_2_workers"):
        out[name]["wall_vs_greedy"] = round(out[name]["wall_s"] / out["greedy"]["wall_s"], 2)
    print("job: " + ", ".join(f"{k} {v['wall_s']} s wall / {v['cpu_s']} CPU-s" for k, v in out.items()), flush=True)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench decoding")
    parser.add_argument("--quick", action="store_true", help="fewer utterances and streams")
    parser.add_argument("--parts", default="batch,streaming,build,capacity,wer,job")
    args = parser.parse_args(argv or [])
    import pyctcdecode
    import kenlm  # noqa: F401

    from w2v_serve import version
    from w2v_serve.decoding import options_for_model
    from w2v_serve.engine import Engine
    from w2v_serve.transcribe import _bundled_model

    parts = set(args.parts.split(","))
    load_start = os.getloadavg()
    model_dir = _bundled_model()
    opts = options_for_model(model_dir)
    engine = Engine(model_dir)
    rows, audio = _corpus(12 if args.quick else 40)
    result: dict = {"w2v": version(), "flashlight_settings": FLASHLIGHT, "pyctcdecode": pyctcdecode.__version__ if hasattr(pyctcdecode, "__version__") else "0.5.0",
                    "decoder": {"method": opts.method, "beam_width": opts.beam_width, "alpha": opts.alpha, "beta": opts.beta},
                    "runtime": engine.runtime, "precision": engine.precision, "load_start": [round(x, 2) for x in load_start]}
    lps = None
    if parts & {"batch", "streaming", "wer"}:
        deciders, flashlight_build = _deciders(engine, opts)     # built once for both parts
    if parts & {"batch", "streaming"}:
        result["batch"], lps = bench_batch(engine, rows, audio, deciders)
        if flashlight_build:
            result["batch"]["flashlight_build"] = flashlight_build
    if "streaming" in parts:
        result["streaming"] = bench_streaming_decode(engine, lps, opts)
    if "build" in parts:
        result["build"] = bench_build(engine.model.vocab, opts)
    if "capacity" in parts:
        result["capacity"] = bench_capacity(model_dir, opts, audio, 6.0 if args.quick else 10.0,
                                            (2, 4, 8) if args.quick else (4, 8, 12, 16, 24))
    if "wer" in parts:
        result["wer"] = bench_wer(engine, deciders, 60 if args.quick else 300)
    if "job" in parts:
        result["job"] = bench_job(rows, 1 if args.quick else 3)
    result["load_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load average: start {result['load_start']}, end {result['load_end']}")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
