"""Parsers of ``w2v serve`` and ``w2v stream`` (argparse only: the handlers import grpc and the
model code when the command runs)."""

from __future__ import annotations

import argparse

from w2v_serve.streaming import StreamingConfig

_DEFAULT_WINDOW = StreamingConfig()


def add_parsers(sub: argparse._SubParsersAction, handler) -> None:
    _add_serve(sub, handler)
    _add_stream(sub, handler)


def _add_serve(sub, handler) -> None:
    p = sub.add_parser("serve", help="run the gRPC streaming recognition service",
                       description="Serve w2v.v1.Recognizer (StreamingRecognize, Recognize) over gRPC, with "
                                   "health checking, reflection and Prometheus metrics.")
    p.add_argument("--model", metavar="DIR", help="model directory (w2v export); default: the bundled model")
    p.add_argument("--backend", choices=("embedded", "triton"), default="embedded",
                   help="embedded: ONNX Runtime in this process (default); triton: forward to Triton servers")
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
    lim.add_argument("--max-stream-seconds", type=float, default=3600.0, help="audio per stream (default 3600)")
    lim.add_argument("--idle-timeout", type=float, default=30.0, metavar="S",
                     help="end a stream with no request for S seconds (default 30)")
    lim.add_argument("--grace-period", type=float, default=30.0, metavar="S",
                     help="on SIGTERM, let open streams finish for up to S seconds (default 30)")
    win = p.add_argument_group("streaming window (embedded backend, or a repository written for --backend triton)")
    win.add_argument("--chunk-ms", type=int, default=_DEFAULT_WINDOW.chunk_ms)
    win.add_argument("--left-context-ms", type=int, default=_DEFAULT_WINDOW.left_context_ms)
    win.add_argument("--right-context-ms", type=int, default=_DEFAULT_WINDOW.right_context_ms)
    win.add_argument("--endpoint-ms", type=int, default=_DEFAULT_WINDOW.endpoint_ms,
                     help="pause after speech that ends a segment with a final result")
    win.add_argument("--max-segment-s", type=float, default=_DEFAULT_WINDOW.max_segment_s)
    dec = p.add_argument_group("decoding (the default; a stream may ask for greedy/beam and a beam width)")
    dec.add_argument("--decoder", choices=("greedy", "beam"),
                     help="default: greedy, beam with --lm; beam uses the model's own LM when it ships one")
    dec.add_argument("--beam-width", type=int, default=64)
    dec.add_argument("--lm", metavar="FILE", help="KenLM language model (ARPA or binary)")
    dec.add_argument("--no-lm", action="store_true", help="beam search without the model's own LM")
    dec.add_argument("--alpha", type=float, help="LM weight (default: the card's tuned value, else 0.5)")
    dec.add_argument("--beta", type=float, help="word insertion bonus (default: tuned value, else 1.0)")
    dec.add_argument("--hotword-weight", type=float, default=10.0)
    tri = p.add_argument_group("triton backend")
    tri.add_argument("--triton-url", action="append", default=[], metavar="HOST:PORT",
                     help="a Triton gRPC endpoint; repeat for several (default: start a local tritonserver)")
    tri.add_argument("--repository", metavar="DIR",
                     help="repository for the local tritonserver (default: one written from --model, "
                          "else the project's model_repository/)")
    tri.add_argument("--triton-timeout", type=float, default=10.0, metavar="S",
                     help="a Triton request unanswered for S seconds takes its server out of rotation")
    tri.add_argument("--triton-check-interval", type=float, default=2.0, metavar="S",
                     help="readiness re-check of every Triton server")
    p.set_defaults(func=handler("w2v_serve.serve_command:cmd_serve"))


def _add_stream(sub, handler) -> None:
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
    p.set_defaults(func=handler("w2v_serve.client:cmd_stream"))
