"""``w2v serve`` (the gRPC streaming recognition service) and ``w2v stream`` (its client on a file).

Parsers need only argparse; the handlers import grpc, the service and the model code when their
command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from w2v_serve.cli import CommandError, handler
from w2v_serve.cli.options import add_decoder_flags, add_runtime_flag, decoder_options
from w2v_serve.model_dir import default_model_dir
from w2v_serve.streaming import StreamingConfig

if TYPE_CHECKING:
    from w2v_serve.service.server import RecognitionServer

_DEFAULT_WINDOW = StreamingConfig()
AUTH_TOKEN_ENV = "W2V_AUTH_TOKEN"     # the bearer token of `w2v serve` and `w2v stream` when no flag gives one


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_serve(sub)
    _add_stream(sub)


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="run the gRPC streaming recognition service",
                       description="Serve w2v.v1.Recognizer (StreamingRecognize, Recognize) over gRPC, with "
                                   "health checking, reflection and Prometheus metrics.")
    p.add_argument("--model", metavar="DIR", help="model directory (w2v export); default: the bundled model")
    p.add_argument("--backend", choices=("embedded", "triton"), default="embedded",
                   help="embedded: ONNX Runtime in this process (default); triton: forward to Triton servers")
    add_runtime_flag(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port (default 50051; 0 picks a free one)")
    p.add_argument("--metrics-port", type=int, metavar="N", help="serve Prometheus /metrics on this HTTP port")
    p.add_argument("--auth-token", metavar="TOKEN",
                   help="require 'authorization: Bearer TOKEN' (default: $W2V_AUTH_TOKEN; none: no auth)")
    p.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain (needs --tls-key)")
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-streams", type=int, default=64, help="concurrent streams (default 64)")
    lim.add_argument("--max-chunk-bytes", type=int, default=1 << 20, help="largest audio message (default 1 MiB)")
    lim.add_argument("--max-stream-seconds", type=float, default=3600.0,
                     help="audio per stream or recording, at the client's sample rate, checked before each "
                          "message's work (default 3600)")
    lim.add_argument("--max-stream-cpu-seconds", type=float, default=1800.0, metavar="S",
                     help="server compute time one stream may take (default 1800)")
    lim.add_argument("--idle-timeout", type=float, default=30.0, metavar="S",
                     help="end a stream whose client sends nothing for S seconds; time the server spends "
                          "on the stream's audio does not count (default 30)")
    lim.add_argument("--min-audio-rate", type=float, default=0.1, metavar="R",
                     help="end a stream whose audio arrives slower than R seconds per second of the "
                          "client's time, after the first --idle-timeout seconds (default 0.1; 0: off)")
    lim.add_argument("--grace-period", type=float, default=30.0, metavar="S",
                     help="on SIGTERM, let open streams finish for up to S seconds (default 30)")
    win = p.add_argument_group("streaming window (embedded backend, or a repository written for --backend triton)")
    win.add_argument("--chunk-ms", type=int, default=_DEFAULT_WINDOW.chunk_ms)
    win.add_argument("--left-context-ms", type=int, default=_DEFAULT_WINDOW.left_context_ms)
    win.add_argument("--right-context-ms", type=int, default=_DEFAULT_WINDOW.right_context_ms)
    win.add_argument("--endpoint-ms", type=int, default=_DEFAULT_WINDOW.endpoint_ms,
                     help="pause after speech that ends a segment with a final result")
    win.add_argument("--max-segment-s", type=float, default=_DEFAULT_WINDOW.max_segment_s)
    add_decoder_flags(p, hotwords=False,
                      title="decoding (the default; a stream may ask for greedy/beam, a beam width and hotwords)")
    tri = p.add_argument_group("triton backend")
    tri.add_argument("--triton-url", action="append", default=[], metavar="HOST:PORT",
                     help="a Triton gRPC endpoint; repeat for several (default: start a local tritonserver)")
    tri.add_argument("--repository", metavar="DIR",
                     help="repository for the local tritonserver (default: one written from --model, "
                          "else from the bundled model)")
    tri.add_argument("--triton-timeout", type=float, default=10.0, metavar="S",
                     help="a Triton request unanswered for S seconds takes its server out of rotation")
    tri.add_argument("--triton-check-interval", type=float, default=2.0, metavar="S",
                     help="readiness re-check of every Triton server")
    p.set_defaults(func=handler("w2v_serve.cli.serve:cmd_serve"))


def _add_stream(sub) -> None:
    p = sub.add_parser("stream", help="stream an audio file to a w2v serve service, print partial and final results")
    p.add_argument("file", metavar="FILE", help="audio file (WAV/FLAC/OGG, any rate and channel count)")
    p.add_argument("--server", default="127.0.0.1:50051", metavar="HOST:PORT")
    p.add_argument("--realtime", action="store_true", help="send audio at the speed it plays")
    p.add_argument("--chunk-ms", type=int, default=100, help="audio per message (default 100)")
    p.add_argument("--format", choices=("text", "jsonl"), default="text",
                   help="text: partials overwrite one line on a terminal, finals one line each; "
                        "jsonl: one object per result")
    p.add_argument("--no-partials", action="store_true", help="ask for final results only")
    p.add_argument("--hotword", action="append", default=[], metavar="WORD")
    p.add_argument("--decoder", choices=("greedy", "beam"), help="default: the server's")
    p.add_argument("--beam-width", type=int, default=0)
    p.add_argument("--token", metavar="TOKEN", help="bearer token (default: $W2V_AUTH_TOKEN)")
    p.add_argument("--tls", action="store_true", help="connect with TLS (system roots, or --tls-ca)")
    p.add_argument("--tls-ca", metavar="PEM", help="CA certificate to trust (implies --tls)")
    p.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds")
    p.set_defaults(func=handler("w2v_serve.cli.serve:cmd_stream"))


# ---------------------------------------------------------------------------- w2v serve
log = logging.getLogger("w2v.serve")
NO_MODEL = ("no --model given and this installation has no bundled default model; "
            "pass --model DIR (a directory written by `w2v export CKPT --out DIR`)")


def window_config(args: argparse.Namespace) -> StreamingConfig:
    return StreamingConfig(chunk_ms=args.chunk_ms, left_context_ms=args.left_context_ms,
                           right_context_ms=args.right_context_ms, endpoint_ms=args.endpoint_ms,
                           max_segment_s=args.max_segment_s)


def _model(args: argparse.Namespace):
    """--model, else the bundled default model (both backends)."""
    model = args.model or default_model_dir()
    if model is None:
        raise CommandError(NO_MODEL)
    return model


def build_backend(args: argparse.Namespace, on_servers_up=None):
    window = window_config(args)
    if args.backend == "embedded":
        if args.triton_url:
            raise CommandError("--triton-url needs --backend triton")
        from w2v_serve.service.backends.embedded import EmbeddedBackend

        model = _model(args)
        return EmbeddedBackend(model, window, decoder_options(args, model), runtime=args.runtime)
    from w2v_serve.service.backends.triton import TritonBackend

    urls, local = list(args.triton_url), None
    if not urls:
        local = _start_local_triton(args, window)
        urls = [local.grpc_url]
    try:
        return TritonBackend(urls, max_streams=args.max_streams, check_interval_s=args.triton_check_interval,
                             request_timeout_s=args.triton_timeout, on_change=on_servers_up, local_server=local)
    except BaseException:
        if local is not None:
            local.stop()
        raise


def _start_local_triton(args: argparse.Namespace, window: StreamingConfig):
    """A tritonserver of our own on --repository, else on a scratch repository written from the
    model (--model or the bundled one) with this window, removed when the server stops."""
    from w2v_serve.triton.launcher import TritonError, TritonServer, free_port, scratch_repository

    repository, scratch = args.repository, args.repository is None
    if scratch:
        from w2v_serve.triton.repository import write_repository

        model = _model(args)
        repository = scratch_repository()
    try:
        if scratch:
            write_repository(model, repository,
                             streaming={"chunk_ms": window.chunk_ms, "left_context_ms": window.left_context_ms,
                                        "right_context_ms": window.right_context_ms,
                                        "endpoint_ms": window.endpoint_ms},
                             idle_timeout_s=max(args.idle_timeout * 2, 60.0))
        server = TritonServer(repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                              log_file=os.environ.get("W2V_TRITON_LOG"), owns_repository=scratch)
    except BaseException:
        if scratch:
            shutil.rmtree(repository, ignore_errors=True)
        raise
    log.info("starting tritonserver on %s", server.repository)
    try:
        # A failed start stops the server (and removes scratch); once up, it is restarted if it dies.
        return server.start(timeout_s=180, supervise=True)
    except TritonError as e:
        raise CommandError(f"--backend triton without --triton-url starts a local tritonserver, which failed: {e}") from e


def _tls(args: argparse.Namespace):
    if not (args.tls_cert or args.tls_key):
        return None
    if not (args.tls_cert and args.tls_key):
        raise CommandError("TLS needs both --tls-cert and --tls-key")
    return Path(args.tls_cert).read_bytes(), Path(args.tls_key).read_bytes()


def cmd_serve(args: argparse.Namespace) -> int:
    from w2v_serve.service.server import RecognitionServer, ServiceLimits

    logging.basicConfig(level=logging.INFO, format="w2v serve: %(message)s", stream=sys.stderr)
    try:
        limits = ServiceLimits(max_streams=args.max_streams, max_chunk_bytes=args.max_chunk_bytes,
                               max_stream_seconds=args.max_stream_seconds,
                               max_stream_cpu_s=args.max_stream_cpu_seconds, idle_timeout_s=args.idle_timeout,
                               min_audio_rate=args.min_audio_rate)
    except ValueError as e:
        raise CommandError(f"limits: {e}") from None
    tls = _tls(args)
    token = args.auth_token or os.environ.get(AUTH_TOKEN_ENV) or None
    gauge = {}
    backend = build_backend(args, on_servers_up=lambda n: gauge["up"].set(n) if "up" in gauge else None)
    server = RecognitionServer(backend, host=args.host, port=args.port, limits=limits, auth_token=token, tls=tls,
                               metrics_port=args.metrics_port, grace_period_s=args.grace_period)
    gauge["up"] = server.metrics.backend_servers_up
    if hasattr(backend, "pool"):
        server.metrics.backend_servers_up.set(backend.pool.up_count)
    try:
        return asyncio.run(_serve(server, args))
    finally:
        server.close()


async def _serve(server: RecognitionServer, args: argparse.Namespace) -> int:
    try:
        port = await server.start()
    except OSError as e:
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {e}") from e
    loop = asyncio.get_running_loop()
    signals = {"count": 0}

    def on_signal(signum: int) -> None:
        signals["count"] += 1
        if signals["count"] == 1:
            log.info("%s: draining (grace period %g s)", signal.Signals(signum).name, args.grace_period)
            server.drain()
        else:  # a second signal: stop now
            server.grace_period_s = 0
            loop.create_task(server._server.stop(0))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    metrics = f", metrics http://{args.host}:{server.metrics_port}/metrics" if server.metrics_port else ""
    auth = ", bearer-token auth" if server.auth_token else ""
    tls = ", TLS" if server.tls else ""
    log.info("listening on %s:%d (backend %s%s%s%s)", args.host, port, server.backend.name, metrics, auth, tls)
    await server.wait()
    log.info("stopped")
    return 0


# ---------------------------------------------------------------------------- w2v stream
def cmd_stream(args: argparse.Namespace) -> int:
    from w2v_serve.audio import AudioError
    from w2v_serve.service.client import RecognizerClient, RecognizerError

    if args.chunk_ms < 10:
        raise CommandError("--chunk-ms must be at least 10")
    token = args.token or os.environ.get(AUTH_TOKEN_ENV) or None
    live = args.format == "text" and sys.stdout.isatty()
    client = RecognizerClient(args.server, token=token, tls=args.tls, tls_ca=args.tls_ca, timeout_s=args.timeout)
    try:
        results = client.stream_file(args.file, chunk_ms=args.chunk_ms, realtime=args.realtime,
                                     interim_results=not args.no_partials, hotwords=args.hotword,
                                     decoder=args.decoder, beam_width=args.beam_width)
        for r in results:
            if args.format == "jsonl":
                print(json.dumps(r), flush=True)
            elif r["is_final"]:
                if r["text"]:
                    print(("\r\x1b[K" if live else "") + r["text"], flush=True)
            elif live:   # a partial: rewrite the current line
                sys.stdout.write("\r\x1b[K" + r["text"])
                sys.stdout.flush()
    except AudioError as e:
        raise CommandError(str(e)) from None
    except RecognizerError as e:
        print(f"w2v stream: error: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0
