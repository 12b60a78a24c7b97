"""``w2v serve``: build the backend from the flags, run the server, shut down on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

from w2v_serve.cli import CommandError
from w2v_serve.decoding import DecoderOptions, options_for_model
from w2v_serve.model_dir import default_model_dir
from w2v_serve.service import AUTH_TOKEN_ENV, RecognitionServer, ServiceLimits
from w2v_serve.streaming import StreamingConfig

log = logging.getLogger("w2v.serve")
NO_MODEL = ("no --model given and this installation has no bundled default model; "
            "pass --model DIR (a directory written by `w2v export CKPT --out DIR`)")


def window_config(args: argparse.Namespace) -> StreamingConfig:
    return StreamingConfig(chunk_ms=args.chunk_ms, left_context_ms=args.left_context_ms,
                           right_context_ms=args.right_context_ms, endpoint_ms=args.endpoint_ms,
                           max_segment_s=args.max_segment_s)


def decoder_options(args: argparse.Namespace, model) -> DecoderOptions:
    return options_for_model(model, method=args.decoder, beam_width=args.beam_width, lm=args.lm,
                             no_lm=args.no_lm, alpha=args.alpha, beta=args.beta,
                             hotword_weight=args.hotword_weight)


def build_backend(args: argparse.Namespace, on_servers_up=None):
    window = window_config(args)
    if args.backend == "embedded":
        if args.triton_url:
            raise CommandError("--triton-url needs --backend triton")
        model = args.model or default_model_dir()
        if model is None:
            raise CommandError(NO_MODEL)
        from w2v_serve.backend_embedded import EmbeddedBackend

        return EmbeddedBackend(model, window, decoder_options(args, model))
    from w2v_serve.backend_triton import TritonBackend

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
    """A tritonserver of our own on a repository: written from --model (with this window), or
    --repository / the project's model_repository/ (which must hold exported weights)."""
    from w2v_serve.triton_launcher import DEFAULT_REPOSITORY, TritonError, TritonServer, free_port

    repository = args.repository
    if repository is None and args.model:
        from export.triton_repo import write_repository

        repository = write_repository(args.model, Path(tempfile.mkdtemp(prefix="w2v-serve-repo-")),
                                      streaming={"chunk_ms": window.chunk_ms, "left_context_ms": window.left_context_ms,
                                                 "right_context_ms": window.right_context_ms,
                                                 "endpoint_ms": window.endpoint_ms},
                                      idle_timeout_s=max(args.idle_timeout * 2, 60.0))
    try:
        server = TritonServer(repository or DEFAULT_REPOSITORY, grpc_port=free_port(), http_port=free_port(),
                              metrics_port=free_port(), log_file=os.environ.get("W2V_TRITON_LOG"))
        log.info("starting tritonserver on %s", server.repository)
        return server.start(timeout_s=180)
    except TritonError as e:
        raise CommandError(f"--backend triton without --triton-url starts a local tritonserver, which failed: {e}") from e


def _tls(args: argparse.Namespace):
    if not (args.tls_cert or args.tls_key):
        return None
    if not (args.tls_cert and args.tls_key):
        raise CommandError("TLS needs both --tls-cert and --tls-key")
    return Path(args.tls_cert).read_bytes(), Path(args.tls_key).read_bytes()


def cmd_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="w2v serve: %(message)s", stream=sys.stderr)
    limits = ServiceLimits(max_streams=args.max_streams, max_chunk_bytes=args.max_chunk_bytes,
                           max_stream_seconds=args.max_stream_seconds, idle_timeout_s=args.idle_timeout)
    if min(limits.max_streams, limits.max_chunk_bytes) < 1 or min(limits.max_stream_seconds, limits.idle_timeout_s) <= 0:
        raise CommandError("limits must be positive")
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
