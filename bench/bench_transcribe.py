"""Batch transcription throughput, and beam search with an LM.

Same files, same model, same run, medians of REPEATS:

* ``engine``      - the model alone: ``Engine.infer`` over preloaded audio in the batches
                    ``w2v transcribe`` forms (model-only time).
* ``api``         - ``Transcriber.transcribe_iter`` over the file paths (load, resample, batch,
                    infer, beam search with KenLM, word times): the CLI's steady state.
* ``cli``         - ``w2v transcribe FILES --format jsonl`` as a process, end to end, including
                    its start-up (imports, session, LM load).
* ``pipeline``    - transformers' ``pipeline("automatic-speech-recognition")`` with a pyctcdecode
                    decoder over the same KenLM (its ``ctc_with_lm`` path), word timestamps on,
                    on the same weights (the transformers model the w2v checkpoint was imported from).

The model is BASE-sized (95 M) with random weights whose CTC head is calibrated on speech so its
output looks like a trained model's (blank on ~60% of frames, sharp posteriors elsewhere): a random
head gives nearly uniform posteriors, for which beam search cost is unrepresentative. Audio: espeak-ng sentences
from Debian's fortunes. LM: `w2v lm build` (IRSTLM, 3-gram) on the fortunes sentences.

Then pyctcdecode beam 64 with the KenLM alone on realistic peaky logits (the model's own on the
same files), real-time factor = decode seconds / audio seconds.
"""

from __future__ import annotations

from typing import Optional

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_FILES = 24
REPEATS = 3
BEAM_WIDTH = 64
BATCH_SIZE = 8
HF_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L", "U",
             "M", "W", "C", "F", "G", "Y", "P", "B", "V", "K", "'", "X", "J", "Q", "Z"]
FORTUNES = Path("/usr/share/games/fortunes")
BLANK_CALIBRATION = {"logit_std": 10.0, "blank_fraction": 0.6}
CACHE = Path(tempfile.gettempdir()) / "w2v-bench-transcribe-v2"      # setup is reused between runs
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb-scotland", "en-029", "en-us+m3", "en-gb-x-rp", "en-us+f2"]


def fortune_sentences(limit: int = 20000) -> list[str]:
    """Plain sentences of 5-14 words from the fortunes database."""
    out: list[str] = []
    for f in sorted(FORTUNES.glob("*")):
        if f.suffix or not f.is_file():
            continue
        for entry in f.read_text(errors="replace").split("\n%\n"):
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(entry.split())):
                s = sentence.strip().rstrip(".!?")
                if re.fullmatch(r"[A-Za-z' ,]+", s):
                    words = s.replace(",", "").split()
                    if 5 <= len(words) <= 14:
                        out.append(" ".join(words))
    return sorted(set(out))[:limit]


def _peaky_base_model(directory: Path, speech: np.ndarray):
    """A BASE Wav2Vec2ForCTC (random init) whose head is calibrated on ``speech`` to emit what a
    trained CTC model emits: blank on about 60% of frames, sharp posteriors elsewhere."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(Wav2Vec2Config(vocab_size=len(HF_TOKENS), pad_token_id=0)).eval()
    with torch.no_grad():
        hidden = model.wav2vec2(torch.from_numpy(speech)[None]).last_hidden_state[0]
        head = model.lm_head
        mean = hidden.mean(0)
        head.weight.mul_(BLANK_CALIBRATION["logit_std"] / ((hidden - mean) @ head.weight.T).std())
        head.bias.copy_(-(head.weight @ mean))
        logits = head(hidden)
        margin = logits[:, 1:].max(dim=1).values - logits[:, 0]
        head.bias[0] += torch.quantile(margin, BLANK_CALIBRATION["blank_fraction"]) + 1.0
    model.save_pretrained(directory)
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(HF_TOKENS)}))
    Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=False).save_pretrained(directory)
    return model


def _setup(work: Path) -> dict:
    """Files, LM and model under ``work`` (kept: a second run reuses them)."""
    import soundfile as sf

    from w2v_serve.audio import load_audio

    work.mkdir(parents=True, exist_ok=True)
    arpa, hf_dir, model_dir = work / "lm.arpa", work / "hf", work / "model"
    files = sorted(work.glob("utt*.wav"))
    if not arpa.exists():
        from w2v_serve.lm import build_lm

        sentences = fortune_sentences()
        (work / "lm.txt").write_text("\n".join(sentences) + "\n")
        build_lm([work / "lm.txt"], arpa, order=3, case="upper")
    if len(files) != N_FILES:
        sentences = fortune_sentences()
        files = []
        for i, text in enumerate(sentences[:: max(1, len(sentences) // N_FILES)][:N_FILES]):
            raw = work / f"raw{i}.wav"
            subprocess.run(["espeak-ng", "-v", VOICES[i % len(VOICES)], "-w", str(raw), text], check=True)
            path = work / f"utt{i:03d}.wav"
            sf.write(path, load_audio(raw), 16000, subtype="PCM_16")
            raw.unlink()
            files.append(path)
    if not (model_dir / "model_card.json").exists():
        from export.exporter import export_model
        from training.convert import import_hf

        _peaky_base_model(hf_dir, np.concatenate([load_audio(f) for f in files[:4]]))
        export_model(import_hf(hf_dir), model_dir, check=False)
    return {"files": files, "hf_dir": hf_dir, "model_dir": model_dir, "lm": arpa}


def _median_time(fn, repeats: int = REPEATS) -> tuple[float, list[float], object, float]:
    """Median wall seconds, all wall times, the last output, and median CPU seconds (this process
    and its children: load-independent where the machine is shared)."""
    import resource

    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    times, cpus, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), cpu()
        out = fn()
        times.append(time.perf_counter() - t)
        cpus.append(cpu() - c)
    return statistics.median(times), times, out, statistics.median(cpus)


def main(argv: Optional[list[str]] = None) -> dict:
    if argv:
        raise SystemExit(f"python -m bench transcribe takes no options (got {' '.join(argv)})")
    import soundfile as sf

    from w2v_serve.audio import load_audio
    from w2v_serve.decoding import BEAM, CTCDecoder, DecoderOptions
    from w2v_serve.engine import Engine, EngineOptions
    from w2v_serve.transcribe import Transcriber

    threads = len(os.sched_getaffinity(0))
    s = _setup(CACHE)
    files, model_dir, lm = s["files"], s["model_dir"], str(s["lm"])
    audio_s = sum(sf.info(f).duration for f in files)
    decoder = DecoderOptions(method=BEAM, beam_width=BEAM_WIDTH, lm=lm)
    engine_options = EngineOptions(batch_size=BATCH_SIZE, threads=threads)

    # Model only: preloaded audio, the batches the transcriber forms.
    engine = Engine(model_dir, engine_options)
    audio = [load_audio(f) for f in files]
    batches = engine.plan_batches([len(a) for a in audio])
    engine.infer([audio[i] for i in batches[0]])                     # warm-up
    engine_s, engine_runs, log_probs, engine_cpu = _median_time(
        lambda: [lp for b in batches for lp in engine.infer([audio[i] for i in b])])

    transcriber = Transcriber(model_dir, decoder=decoder, engine_options=engine_options)
    transcriber.transcribe(files[0])                                 # warm-up
    api_s, api_runs, results, api_cpu = _median_time(lambda: list(transcriber.transcribe_iter(files)))

    cli = [sys.executable, "-m", "w2v_serve.cli", "transcribe", *map(str, files), "--model", str(model_dir),
           "--lm", lm, "--beam-width", str(BEAM_WIDTH), "--batch-size", str(BATCH_SIZE),
           "--threads", str(threads), "--format", "jsonl"]
    cli_s, cli_runs, proc, cli_cpu = _median_time(lambda: subprocess.run(cli, capture_output=True, text=True, check=True))
    cli_texts = [json.loads(line)["text"] for line in proc.stdout.splitlines()]

    pipeline_s, pipeline_runs, pipeline_texts, pipeline_cpu = _bench_pipeline(s["hf_dir"], files, lm, threads)

    # Beam 64 + KenLM alone on the model's logits of these files.
    beam = CTCDecoder(transcriber.vocab, decoder)
    flat = [lp for lp in log_probs]
    decode_s, _, _, decode_cpu = _median_time(lambda: [beam.decode(lp) for lp in flat])
    frames = sum(len(lp) for lp in flat)
    peak = float(np.mean([np.exp(lp.max(axis=1)).mean() for lp in flat]))

    agree = sum(a == r.text for a, r in zip(cli_texts, results))
    result = {
        "files": len(files), "audio_s": round(audio_s, 1), "threads": threads, "batch_size": BATCH_SIZE,
        "model": "BASE-size wav2vec2 (95 M), random weights, CTC head calibrated to trained-model-like output",
        "decoder": f"pyctcdecode beam {BEAM_WIDTH} + KenLM 3-gram (IRSTLM), word timestamps",
        "engine_only_s": round(engine_s, 3), "api_s": round(api_s, 3), "cli_s": round(cli_s, 3),
        "pipeline_s": round(pipeline_s, 3),
        "cpu_s": {"engine": round(engine_cpu, 2), "api": round(api_cpu, 2), "cli": round(cli_cpu, 2),
                  "pipeline": round(pipeline_cpu, 2)},
        "load_average_after": os.getloadavg(),
        "runs": {"engine": engine_runs, "api": api_runs, "cli": cli_runs, "pipeline": pipeline_runs},
        "api_vs_model_only_throughput": round(engine_s / api_s, 3),
        "cli_vs_model_only_throughput": round(engine_s / cli_s, 3),
        "api_vs_pipeline_speedup": round(pipeline_s / api_s, 3),
        "cli_vs_pipeline_speedup": round(pipeline_s / cli_s, 3),
        "rtf_engine": round(engine_s / audio_s, 4), "rtf_cli": round(cli_s / audio_s, 4),
        "rtf_pipeline": round(pipeline_s / audio_s, 4),
        "cli_equals_api_transcripts": f"{agree}/{len(files)}",
        # pyctcdecode's own output keeps special tokens (⁇N) that w2v drops from transcripts.
        "pipeline_equals_api_transcripts":
            f"{sum(' '.join(re.sub(r'⁇[0-9]+', '', p).split()) == r.text for p, r in zip(pipeline_texts, results))}/{len(files)}",
        "beam64_kenlm_decode_s": round(decode_s, 4),
        "beam64_kenlm_rtf": round(decode_s / (frames * 0.02), 5),
        "beam64_kenlm_rtf_cpu": round(decode_cpu / (frames * 0.02), 5),
        "logits_mean_max_prob": round(peak, 3),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    return result


def _bench_pipeline(hf_dir: Path, files: list[Path], lm: str, threads: int):
    import logging

    import torch
    from pyctcdecode import build_ctcdecoder
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, pipeline
    from transformers.utils import logging as hf_logging

    from w2v_serve.audio import load_audio
    from w2v_serve.vocab import Vocabulary

    hf_logging.set_verbosity_error()
    logging.getLogger("pyctcdecode").setLevel(logging.ERROR)
    torch.set_num_threads(threads)
    model = Wav2Vec2ForCTC.from_pretrained(hf_dir).eval()
    tokenizer = Wav2Vec2CTCTokenizer(str(hf_dir / "vocab.json"))
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(hf_dir)
    labels = Vocabulary.from_hf_vocab_json(hf_dir / "vocab.json").pyctcdecode_labels()
    decoder = build_ctcdecoder(labels, kenlm_model_path=lm, alpha=0.5, beta=1.0)   # w2v's defaults
    asr = pipeline("automatic-speech-recognition", model=model, tokenizer=tokenizer, feature_extractor=extractor,
                   decoder=decoder, device="cpu")
    kwargs = {"decoder_kwargs": {"beam_width": BEAM_WIDTH}, "return_timestamps": "word"}
    asr({"raw": load_audio(files[0]), "sampling_rate": 16000}, **kwargs)        # warm-up

    def run():
        # The same loader as w2v (soundfile + soxr), inside the timed region like w2v's loading.
        with torch.inference_mode():
            return [asr({"raw": load_audio(f), "sampling_rate": 16000}, **kwargs)["text"] for f in files]

    return _median_time(run)


if __name__ == "__main__":
    main()
