"""``w2v serve``: the gRPC streaming recognition service (w2v.v1.Recognizer and Riva's API).

Parsers need only argparse; the handlers import grpc, the service and the model code when their
command runs.
"""

from __future__ import annotations

import argparse
import asyncio
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


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="run the gRPC streaming recognition service",
                       description="Serve w2v.v1.Recognizer (StreamingRecognize, Recognize) and NVIDIA Riva's "
                                   "nvidia.riva.asr.RivaSpeechRecognition (Recognize, StreamingRecognize, "
                                   "GetRivaSpeechRecognitionConfig) on one gRPC port, with health checking, "
                                   "reflection and Prometheus metrics. Several models may be served; a request "
                                   "picks one by name (or, on the Riva API, by language code).")
    p.add_argument("--model", action="append", default=[], metavar="[NAME=]DIR",
                   help="a model to serve (repeatable): NAME=DIR, or a model directory (w2v export) named by its "
                        "card (else by the directory's name), or a folder of model directories; "
                        "default: the bundled model")
    p.add_argument("--default-model", metavar="NAME",
                   help="the model of requests that name none (default: the first --model)")
    p.add_argument("--model-idle-unload", type=float, default=600.0, metavar="S",
                   help="unload a model other than the default after S seconds unused (default 600; 0: never). "
                        "The default model loads at start; the others load on first use")
    p.add_argument("--no-riva", action="store_true",
                   help="serve only w2v.v1.Recognizer (by default Riva's API is served too when nvidia-riva-client "
                        "is installed: pip install 'w2v[riva]')")
    p.add_argument("--backend", choices=("embedded", "triton"), default="embedded",
                   help="embedded: ONNX Runtime in this process (default); triton: forward to Triton servers")
    add_runtime_flag(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port (default 50051; 0 picks a free one)")
    p.add_argument("--metrics-port", type=int, metavar="N", help="serve Prometheus /metrics on this HTTP port")
    web = p.add_argument_group("HTTP (docs/http.md; needs pip install 'w2v[http]')")
    web.add_argument("--http-port", type=int, metavar="N",
                     help="also serve HTTP on this port (0 picks a free one): OpenAI's POST /v1/audio/transcriptions "
                          "and GET /v1/models, WebSocket streaming at /ws (Vosk's protocol), the microphone page at /, "
                          "/metrics; same models, token and limits as gRPC")
    web.add_argument("--max-upload-mb", type=float, default=100.0, metavar="MB",
                     help="largest upload to /v1/audio/transcriptions (default 100; longer audio than "
                          "--max-stream-seconds is refused too)")
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


# ---------------------------------------------------------------------------- w2v serve
log = logging.getLogger("w2v.serve")
NO_MODEL = ("no --model given and this installation has no bundled default model; "
            "pass --model DIR (a directory written by `w2v export CKPT --out DIR`)")


def window_config(args: argparse.Namespace) -> StreamingConfig:
    return StreamingConfig(chunk_ms=args.chunk_ms, left_context_ms=args.left_context_ms,
                           right_context_ms=args.right_context_ms, endpoint_ms=args.endpoint_ms,
                           max_segment_s=args.max_segment_s)


def model_entries(args: argparse.Namespace):
    """The served models: the --model values, else the bundled default model."""
    from w2v_serve.service.models import ModelEntry, ModelSpecError, parse_model_specs

    try:
        if args.model:
            return parse_model_specs(args.model)
        model = default_model_dir()
        if model is None:
            raise CommandError(NO_MODEL)
        return [ModelEntry.from_directory(model)]
    except (ModelSpecError, ValueError) as e:
        raise CommandError(str(e)) from e


def build_registry(args: argparse.Namespace, on_servers_up=None):
    """The ModelRegistry of the --model flags on --backend (nothing is loaded yet)."""
    from w2v_serve.service.models import ModelRegistry, ModelSpecError

    entries = model_entries(args)
    if args.backend == "embedded" and args.triton_url:
        raise CommandError("--triton-url needs --backend triton")
    if args.backend == "triton" and len(entries) > 1 and (args.triton_url or args.repository):
        raise CommandError("several models on --backend triton need a local tritonserver each: "
                           "leave out --triton-url and --repository")
    try:
        return ModelRegistry(entries, lambda entry: build_backend(args, entry.path, on_servers_up),
                             default=args.default_model, idle_unload_s=args.model_idle_unload, kind=args.backend)
    except ModelSpecError as e:
        raise CommandError(str(e)) from e


def build_backend(args: argparse.Namespace, model, on_servers_up=None):
    """One model's backend: ONNX Runtime in process, or Triton (the given servers, else a local
    tritonserver of its own)."""
    window = window_config(args)
    if args.backend == "embedded":
        from w2v_serve.service.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(model, window, decoder_options(args, model), runtime=args.runtime)
    from w2v_serve.service.backends.triton import TritonBackend

    urls, local = list(args.triton_url), None
    if not urls:
        local = _start_local_triton(args, window, model)
        urls = [local.grpc_url]
    try:
        return TritonBackend(urls, max_streams=args.max_streams, check_interval_s=args.triton_check_interval,
                             request_timeout_s=args.triton_timeout, on_change=on_servers_up, local_server=local)
    except BaseException:
        if local is not None:
            local.stop()
        raise


def _start_local_triton(args: argparse.Namespace, window: StreamingConfig, model):
    """A tritonserver of our own on --repository, else on a scratch repository written from the
    model (--model or the bundled one) with this window, removed when the server stops."""
    from w2v_serve.triton.launcher import TritonError, TritonServer, free_port, scratch_repository

    repository, scratch = args.repository, args.repository is None
    if scratch:
        from w2v_serve.triton.repository import write_repository

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
    if args.model_idle_unload < 0:
        raise CommandError("--model-idle-unload must be 0 (never) or positive")
    gauge = {}

    def servers_up(_n: int) -> None:   # Triton servers in rotation, over every loaded model
        if "up" in gauge:
            gauge["up"].set(sum(b.pool.up_count for b in registry.loaded() if hasattr(b, "pool")))

    if args.http_port is not None:
        from w2v_serve.service import web

        if web.missing():
            raise CommandError(f"{web.MISSING} (missing: {', '.join(web.missing())})")
        if args.max_upload_mb <= 0:
            raise CommandError("--max-upload-mb must be positive")
    registry = build_registry(args, on_servers_up=servers_up)
    riva = False if args.no_riva else None
    if riva is None:
        from w2v_serve.service import riva as riva_api

        if not riva_api.available():
            log.warning("Riva's API is off: %s", riva_api.MISSING)
    server = RecognitionServer(registry, host=args.host, port=args.port, limits=limits, auth_token=token, tls=tls,
                               metrics_port=args.metrics_port, grace_period_s=args.grace_period, riva=riva)
    gauge["up"] = server.metrics.backend_servers_up
    try:
        return asyncio.run(_serve(server, args))
    finally:
        server.close()


async def _serve(server: RecognitionServer, args: argparse.Namespace) -> int:
    try:
        port = await server.start()
    except (OSError, ValueError) as e:
        if not isinstance(e, OSError):
            raise CommandError(f"cannot load model {server.models.default_name}: {e}") from e
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {e}") from e
    http = None
    if args.http_port is not None:
        from w2v_serve.service.web.app import HttpServer

        http = HttpServer(server, args.host, args.http_port, max_upload_bytes=int(args.max_upload_mb * (1 << 20)))
        try:
            await http.start()
        except OSError as e:
            raise CommandError(f"cannot listen on {args.host}:{args.http_port} (--http-port): {e}") from e
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
    up = [b.pool.up_count for b in server.models.loaded() if hasattr(b, "pool")]
    if up:
        server.metrics.backend_servers_up.set(sum(up))
    riva = ", Riva API" if server.riva is not None else ""
    log.info("listening on %s:%d (backend %s, models %s; default %s%s%s%s%s)", args.host, port, server.models.kind,
             server.models.served(), server.models.default_name, riva, metrics, auth, tls)
    if http is not None:
        log.info("HTTP on http://%s:%d (OpenAI API /v1, WebSocket /ws, page /)", args.host, http.port)
    await server.wait()
    if http is not None:
        await http.stop()
    log.info("stopped")
    return 0
