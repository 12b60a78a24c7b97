"""``w2v stream``: stream an audio file to a ``w2v serve`` service (w2v.v1 or Riva's API) and
print its partial and final results."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from w2v_serve.cli import CommandError, handler
from w2v_serve.cli.serve import AUTH_TOKEN_ENV
PROTOCOLS = ("w2v", "riva")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stream", help="stream an audio file to a w2v serve service, print partial and final results")
    p.add_argument("file", metavar="FILE", help="audio file (WAV/FLAC/OGG, any rate and channel count)")
    p.add_argument("--server", default="127.0.0.1:50051", metavar="HOST:PORT")
    p.add_argument("--protocol", choices=PROTOCOLS, default="w2v",
                   help="w2v: the w2v.v1.Recognizer API (default); riva: NVIDIA Riva's RivaSpeechRecognition API "
                        "(WAV files are sent whole, header first, as Riva's scripts send them)")
    p.add_argument("--model", metavar="NAME", help="a model the server serves (default: the server's default)")
    p.add_argument("--language-code", metavar="CODE", help="pick the server's model for this language (riva)")
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
    p.set_defaults(func=handler("w2v_serve.cli.stream:cmd_stream"))


def cmd_stream(args: argparse.Namespace) -> int:
    from w2v_serve.audio import AudioError
    from w2v_serve.service.client import RecognizerError, open_client

    if args.chunk_ms < 10:
        raise CommandError("--chunk-ms must be at least 10")
    if args.language_code and args.protocol != "riva":
        raise CommandError("--language-code needs --protocol riva (w2v.v1 picks models by --model)")
    token = args.token or os.environ.get(AUTH_TOKEN_ENV) or None
    live = args.format == "text" and sys.stdout.isatty()
    try:
        client = open_client(args.protocol, args.server, token=token, tls=args.tls, tls_ca=args.tls_ca,
                             timeout_s=args.timeout)
    except ImportError as e:
        raise CommandError(str(e)) from e
    extra = {"language_code": args.language_code} if args.language_code else {}
    try:
        results = client.stream_file(args.file, chunk_ms=args.chunk_ms, realtime=args.realtime,
                                     interim_results=not args.no_partials, hotwords=args.hotword,
                                     decoder=args.decoder, beam_width=args.beam_width, model=args.model, **extra)
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
