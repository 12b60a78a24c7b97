"""``w2v triton``: the real tritonserver on a model repository, stopped cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys

from w2v_serve.cli import handler


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from w2v_serve.triton.launcher import DEFAULT_REPOSITORY

    p = sub.add_parser("triton", help="run the real tritonserver on the model repository")
    p.add_argument("--repository", default=str(DEFAULT_REPOSITORY), metavar="DIR",
                   help="model repository (default: the project's model_repository/)")
    p.add_argument("--tritonserver", metavar="PATH", help="tritonserver binary (default: the nvidia-pytriton wheel's)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait until ready")
    p.add_argument("--verbose", action="store_true", help="verbose server log")
    p.set_defaults(func=handler("w2v_serve.cli.triton:cmd_triton"))


def cmd_triton(args: argparse.Namespace) -> int:
    from w2v_serve.triton.launcher import TritonServer

    server = TritonServer(args.repository, grpc_port=args.grpc_port, http_port=args.http_port,
                          metrics_port=args.metrics_port, host=args.host, tritonserver=args.tritonserver,
                          log_file="-", verbose=args.verbose)
    stopping: dict = {"signal": None}

    def on_signal(signum, _frame):
        stopping["signal"] = signum
        server.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        server.start(args.timeout)
        print(f"tritonserver ready: gRPC {server.grpc_url}, HTTP {args.host}:{args.http_port}, "
              f"metrics {args.host}:{args.metrics_port} (repository {server.repository})", file=sys.stderr, flush=True)
        code = server.process.wait()
    finally:
        server.stop()
    return 0 if stopping["signal"] is not None else code
