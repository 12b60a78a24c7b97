"""``w2v transcribe FILE...``: batch transcription to text, JSON lines, SRT or WebVTT.

Inputs: files, directories (audio files under them, recursively), glob patterns and manifests
(.tsv, .jsonl), in the order given (each directory's and pattern's matches sorted), then the paths
listed in --files-from. Results come out in that order; a file that fails is reported (stderr; in
JSON lines as ``{"path", "error"}``) and the others still run; the exit code is 1 if any failed.
A progress bar (files, audio hours, ETA) goes to stderr when it is a terminal. With --ray the
files are transcribed on a Ray cluster into sharded JSON lines under --output-dir (docs/batch.md).
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, Optional, TextIO

from w2v_serve.cli import CommandError, handler
from w2v_serve.cli.options import add_decoder_flags, add_runtime_flag, add_variant_flag, decoder_options
from w2v_serve.model_dir import write_text_atomic
from w2v_serve.subtitles import render_srt, render_vtt, subtitle_cues
from w2v_serve.transcribe import TranscriptionResult

AUDIO_SUFFIXES = {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".w64", ".caf"}
FORMATS = ("text", "jsonl", "srt", "vtt", "parquet")      # parquet: --ray only
OUTPUT_SUFFIX = {"text": ".txt", "jsonl": ".json", "srt": ".srt", "vtt": ".vtt"}


def add_parsers(sub) -> None:
    p = sub.add_parser("transcribe", help="transcribe audio files (text, JSON lines, SRT, WebVTT)",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("inputs", nargs="*", metavar="FILE",
                   help="audio files, directories, glob patterns or manifests (.tsv, .jsonl)")
    p.add_argument("--files-from", metavar="LIST",
                   help="also transcribe the files this listing names, read as a stream: one path per line, "
                        "a fairseq .tsv or a .jsonl manifest ('-': standard input)")
    src = p.add_argument_group("model")
    src.add_argument("--model", metavar="DIR", help="model directory (default: the bundled model)")
    src.add_argument("--triton", metavar="HOST:PORT", help="run the acoustic model on a Triton server")
    add_runtime_flag(src)
    add_variant_flag(src)
    add_decoder_flags(p)
    out = p.add_argument_group("output")
    out.add_argument("--format", choices=FORMATS, default="text",
                     help="text (default), jsonl, srt, vtt; parquet (--ray: Parquet shards beside the JSON lines)")
    out.add_argument("--output-dir", metavar="DIR", help="write one file per input here instead of stdout")
    run = p.add_argument_group("performance")
    run.add_argument("--batch-size", type=int, default=8, metavar="N", help="files (or windows) per model run")
    run.add_argument("--threads", type=int, default=0, metavar="N", help="inference threads (default: all cores)")
    run.add_argument("--window", type=float, default=30.0, metavar="SECONDS",
                     help="longer recordings run in 8-16 s segments cut at pauses, and in overlapping "
                          "windows of this length where there is no pause")
    run.add_argument("--no-pause-cuts", action="store_true",
                     help="run longer recordings in overlapping windows throughout")
    run.add_argument("--decode-workers", type=int, default=None, metavar="N",
                     help="processes that run the beam search beside the model (default: none while the "
                          "model runs on the CPU, where a low-priority thread decodes beside it; with the "
                          "model on a GPU, one per 120 s of audio, at most one per core but one and 8; "
                          "none with greedy; 0: decode in this process; --ray decodes in Ray tasks instead)")
    ray = p.add_argument_group("Ray cluster (pip install 'w2v[ray]'; docs/batch.md)")
    ray.add_argument("--ray", metavar="ADDRESS",
                     help="transcribe on a Ray cluster: HOST:PORT or auto joins a running one, local starts one "
                          "on this host; results go to sharded DIR/part-*.jsonl under --output-dir (needed), "
                          "a rerun skips the files already there")
    ray.add_argument("--actors", type=int, default=None, metavar="N",
                     help="model actors (default: one per node; with --num-gpus-per-actor, one per GPU share)")
    ray.add_argument("--num-gpus-per-actor", type=float, default=0.0, metavar="X",
                     help="GPUs each model actor reserves (default 0: CPU actors)")
    p.set_defaults(func=handler("w2v_serve.cli.transcribe:cmd_transcribe"))


# ---------------------------------------------------------------------------- inputs
def expand_inputs(args: Iterable[str]) -> list[str]:
    """Files as given (missing ones too: they fail with "no such file"), directories to their
    audio files, glob patterns to their matches (a pattern with no match is kept, and fails),
    manifests (.tsv, .jsonl) to the files they list."""
    return list(iter_inputs(args))


def iter_inputs(args: Iterable[str], files_from: Optional[str] = None) -> Iterator[str]:
    """``expand_inputs`` as a stream, then the files ``files_from`` lists (read line by line)."""
    from w2v_serve.listing import is_manifest, iter_listing

    for arg in args:
        path = Path(arg)
        if path.is_file() and is_manifest(arg):
            yield from iter_listing(arg)
            continue
        out: list[str] = []
        if path.is_dir():
            out += sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        elif not path.exists() and glob.has_magic(arg):
            matches = sorted(m for m in glob.glob(arg, recursive=True) if Path(m).is_file())
            out += matches or [arg]
        else:
            out.append(arg)
        yield from out
    if files_from:
        yield from iter_listing(files_from)


# ---------------------------------------------------------------------------- formats
def render(result: TranscriptionResult, fmt: str) -> str:
    if fmt == "jsonl":
        return result.to_json() + "\n"
    if fmt == "text":
        return result.text + "\n"
    cues = subtitle_cues(result.words)
    return render_srt(cues) if fmt == "srt" else render_vtt(cues)


class _Writer:
    """Sends each result where --format / --output-dir say, in input order."""

    def __init__(self, fmt: str, output_dir: Optional[str], n_inputs: int, stdout: TextIO):
        self.fmt, self.stdout, self.n_inputs = fmt, stdout, n_inputs
        self.output_dir = Path(output_dir) if output_dir else None
        self.used: set[str] = set()
        if self.output_dir:
            self.output_dir.mkdir(parents=True, exist_ok=True)

    def write(self, result: TranscriptionResult) -> None:
        if not result.ok:
            print(f"w2v transcribe: {result.error}", file=sys.stderr)
            if self.fmt == "jsonl" and self.output_dir is None:
                self.stdout.write(render(result, "jsonl"))
            return
        text = render(result, self.fmt)
        if self.output_dir is None:
            if self.fmt == "text" and self.n_inputs > 1:
                text = f"{result.path}: {text}"
            self.stdout.write(text)
            self.stdout.flush()
            return
        write_text_atomic(self._target(result.path or "array"), text)

    def _target(self, path: str) -> Path:
        stem, n = Path(path).stem, 1
        name = stem + OUTPUT_SUFFIX[self.fmt]
        while name in self.used:            # same name from different folders
            n += 1
            name = f"{stem}-{n}{OUTPUT_SUFFIX[self.fmt]}"
        self.used.add(name)
        return self.output_dir / name


# ---------------------------------------------------------------------------- progress
class _Progress:
    """tqdm bar over audio hours with a files counter; nothing when stderr is not a terminal."""

    def __init__(self, paths: Optional[list[str]], enabled: bool):
        """``paths``: None when the inputs are a stream (files counted, no total)."""
        self.bar = None
        self.done = 0
        self.n = len(paths) if paths is not None else None
        if not enabled:
            return
        if paths is None:
            from tqdm import tqdm

            self.bar = tqdm(unit=" files", file=sys.stderr, desc="transcribe", dynamic_ncols=True)
            return
        from tqdm import tqdm

        from w2v_serve.audio import AudioError, probe

        total = 0.0
        for p in paths:
            try:
                total += probe(p).duration_s
            except AudioError:
                pass
        self.bar = tqdm(total=round(total / 3600, 4), unit="h", unit_scale=False, file=sys.stderr,
                        bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} h audio [{elapsed}<{remaining}]{postfix}",
                        desc="transcribe", dynamic_ncols=True)
        self.bar.set_postfix_str(f"files 0/{self.n}")

    def update(self, result: TranscriptionResult) -> None:
        self.done += 1
        if self.bar is not None and self.n is None:
            self.bar.update(1)
        elif self.bar is not None:
            self.bar.update(result.duration_s / 3600)
            self.bar.set_postfix_str(f"files {self.done}/{self.n}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------- command
def cmd_transcribe(args) -> int:
    from w2v_serve.listing import is_manifest
    from w2v_serve.transcribe import Transcriber

    if not args.inputs and not args.files_from:
        raise CommandError("no input: name audio files (or folders, patterns, manifests) or --files-from LIST")
    if args.files_from or any(is_manifest(a) for a in args.inputs):
        paths: Iterable[str] = iter_inputs(args.inputs, args.files_from)     # streamed: any length
        count = None
    else:
        paths = expand_inputs(args.inputs)
        count = len(paths)
    if args.format in ("srt", "vtt") and count != 1 and not args.output_dir:
        raise CommandError(f"--format {args.format} for {count or 'many'} files needs --output-dir DIR (one file each)")
    if args.ray:
        return _run_on_ray(paths, count, args)
    if args.format == "parquet":
        raise CommandError("--format parquet is for --ray (Parquet shards under --output-dir)")
    if args.triton:
        return _run(_triton_transcriber(args), paths, args, count)
    model = _model_dir(args)
    decoder = decoder_options(args, model)
    engine = _engine_options(args)
    workers = args.decode_workers
    if workers is None:
        from w2v_serve.transcribe import AUTO_WORKERS_MIN_AUDIO_S, MAX_AUTO_DECODE_WORKERS, audio_seconds, auto_decode_workers

        enough = AUTO_WORKERS_MIN_AUDIO_S * MAX_AUTO_DECODE_WORKERS
        # A streamed listing (--files-from, manifests) is not read twice: it counts as long.
        seconds = enough if count is None else audio_seconds(paths, enough)
        workers = auto_decode_workers(decoder, seconds if decoder.method == "beam" else 0.0)
    with Transcriber(model, decoder=decoder, engine_options=engine, decode_workers=workers) as transcriber:
        return _run(transcriber, paths, args, count)


def _model_dir(args):
    from w2v_serve.model_dir import default_model_dir

    model = args.model or default_model_dir()
    if model is None:
        raise CommandError("no bundled default model in this installation yet; pass --model DIR "
                           "(a directory written by `w2v export CKPT --out DIR`)")
    return model


def _engine_options(args):
    from w2v_serve.engine import EngineOptions

    return EngineOptions(variant=args.variant, runtime=args.runtime, threads=args.threads,
                         batch_size=args.batch_size, window_s=args.window,
                         cut_at_pauses=not args.no_pause_cuts)


def _triton_options(args) -> dict:
    """The server's ``offline`` model decodes; its LM is configured on the server."""
    from w2v_serve.decoding import decoder_method

    if args.lm:
        raise CommandError("--lm is not used with --triton: the language model is set on the server "
                           "(the offline model's 'lm' parameter)")
    method = decoder_method(args.decoder, args.hotword, default=None)   # None: the server's default
    return dict(decoder=method, beam_width=args.beam_width if method == "beam" else None, hotwords=tuple(args.hotword))


def _triton_transcriber(args):
    from w2v_serve.triton.client import TritonClientError, TritonTranscriber

    try:
        return TritonTranscriber(args.triton, **_triton_options(args))
    except TritonClientError as e:
        raise CommandError(str(e)) from e


def _run(transcriber, paths: Iterable[str], args, count: Optional[int]) -> int:
    writer = _Writer(args.format, args.output_dir, 2 if count is None else count, sys.stdout)
    progress = _Progress(paths if count is not None else None,
                         enabled=sys.stderr.isatty() and not os.environ.get("W2V_NO_PROGRESS"))
    failed = total = 0
    try:
        for result in transcriber.transcribe_iter(paths, on_result=progress.update):
            failed += not result.ok
            total += 1
            writer.write(result)
    finally:
        progress.close()
    if failed:
        print(f"w2v transcribe: {failed} of {total} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


def _run_on_ray(paths: Iterable[str], count: Optional[int], args) -> int:
    """The Ray Data pipeline (w2v_serve.batch_ray, imported only here)."""
    if not args.output_dir:
        raise CommandError("--ray writes sharded results under --output-dir DIR (needed)")
    try:
        from w2v_serve.batch_ray import (RayJob, RayJobFailed, RaySettings, RayUnavailable, import_ray,
                                         transcribe_on_ray)

        import_ray()
    except RayUnavailable as e:
        raise CommandError(str(e)) from None
    if args.triton:
        job = RayJob(triton=args.triton, triton_options=_triton_options(args))
    else:
        model = _model_dir(args)
        job = RayJob(model=str(Path(model).resolve()), decoder=decoder_options(args, model),
                     engine=_engine_options(args))
    settings = RaySettings(address=args.ray, output_dir=args.output_dir, parquet=args.format == "parquet",
                           actors=args.actors, num_gpus_per_actor=args.num_gpus_per_actor,
                           batch_size=args.batch_size, progress=not os.environ.get("W2V_NO_PROGRESS"))
    per_file = args.format in ("text", "srt", "vtt")
    writer = _Writer(args.format, args.output_dir, 2, sys.stdout) if per_file else None

    def on_result(result: TranscriptionResult) -> None:
        if writer is not None:
            writer.write(result)
        elif not result.ok:
            print(f"w2v transcribe: {result.error}", file=sys.stderr)

    if count is None and args.files_from and args.files_from != "-":
        count = sum(1 for _ in iter_inputs(args.inputs, args.files_from))     # for the progress view
    try:
        summary = transcribe_on_ray(paths, job, settings, total=count, on_result=on_result)
    except (RayUnavailable, RayJobFailed) as e:
        raise CommandError(str(e)) from None
    failed = summary.failed + summary.skipped_failed
    if failed:
        print(f"w2v transcribe: {failed} of {summary.done + summary.skipped} file(s) failed "
              f"({summary.skipped_failed} recorded by an earlier run)", file=sys.stderr)
    return 1 if failed else 0
