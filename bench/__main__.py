"""Run every benchmark module ``bench/bench_*.py`` (each has ``main(argv=None) -> dict``), or those named.

    python -m bench                 # all
    python -m bench export pretrain # bench_export.py and bench_pretrain.py only
    python -m bench engine --quick  # names, then options for their main(argv)

Each run appends one JSON line per figure to ``bench/results/<name>.jsonl`` (see
:mod:`bench.records` for the fields): nested dicts in a module's result become dotted figure
names, and every line carries the machine, the date, the versions, the exact command and the
load average at the start, so a figure quoted in the docs can be traced to the run that measured it.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from bench.records import RESULTS, append_records, command_line, run_context

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    names = sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))
    # Benchmark names first; everything from the first "-..." on is options for them.
    first_option = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    argv, options = argv[:first_option], argv[first_option:]
    chosen = argv or names
    unknown = [n for n in chosen if n not in names]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; have: {', '.join(names)}", file=sys.stderr)
        return 2
    failed = []
    for name in chosen:
        print(f"\n=== bench {name} ===", flush=True)
        context = run_context(command_line(name, options))  # load average before the run
        try:
            module = importlib.import_module(f"bench.bench_{name}")
            result = module.main(options)
        except Exception as e:  # one broken benchmark does not hide the others
            print(f"bench {name} failed: {type(e).__name__}: {e}", file=sys.stderr)
            failed.append(name)
            continue
        path = RESULTS / f"{name}.jsonl"
        n = append_records(path, name, result, context, units=getattr(module, "UNITS", None))
        print(f"{n} figures appended to {path} (run {context['date']}, load {context['load']})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
