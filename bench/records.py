"""Benchmark records: one JSON line per figure, appended to ``bench/results/<name>.jsonl``.

A line::

    {"bench": "streaming", "figure": "streaming.default.vs_offline", "value": 2.45, "unit": "x",
     "cpu_model": "AMD EPYC", "cpu_flags": ["avx2", "avx512f", "avx512_bf16"], "cores": 2, "date": "2026-12-05T09:10:03Z", "w2v_version": "0.1.0",
     "commit": "b83fbac...", "versions": {"python": "3.11.2", "numpy": "1.26.4", ...},
     "command": "python -m bench streaming", "load": [0.5, 0.6, 0.3]}

``figure`` is the dotted path of the value in the dict the module's ``main()`` returned; ``date``
(UTC, the start of the run) identifies the run, so every line of one run shares it; ``load`` is
``os.getloadavg()`` at the start of the run (1, 5 and 15 minutes); ``unit`` is present when the
module declares it (a module-level ``UNITS`` dict, figure -> unit) or the figure's name says it
(``_ms``, ``_s``, ``_mib``, ``wer`` ...: ``NAME_UNITS``).

Docs quote a figure in a table row whose last cell is the record's address, ``name.jsonl @ date``
(tests/test_docs_figures.py checks each against the committed files)::

    python -m bench.records streaming                       # the runs in bench/results/streaming.jsonl
    python -m bench.records streaming --run 2026-12-05T09:10:03Z --figures streaming.default.vs_offline
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Optional

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# Libraries whose version goes into every record, when installed.
LIBRARIES = ("numpy", "onnxruntime", "openvino", "torch", "transformers", "pyctcdecode", "kenlm",
             "onnx", "grpcio", "tritonclient", "nvidia-pytriton", "pocketsphinx", "soxr", "soundfile")

# Unit from the figure's last name part, when the module does not declare one: the first rule
# whose pattern matches wins.
NAME_UNITS = ((r"ms_per_audio_s", "ms/s"), (r"(^|_)ms(_|$)", "ms"), (r"(^|_)mib(_|$)", "MiB"),
              (r"(^|_)mb(_|$)", "MB"), (r"gflop", "GFLOP/s"), (r"real_time_factor|(^|_)rtf(_|$)", "s/s"),
              (r"(^|_)(wer|cer)(_|$)", "fraction"), (r"(^|_)vs_|(^|_)ratio(_|$)|speedup", "x"),
              (r"(^|_)s(_|$)|seconds", "s"))

# Environment variables that change what a benchmark measures; part of the command when set.
ENV_PREFIX = "W2V_BENCH_"


def cpu_model() -> str:
    """The exact ``model name`` of /proc/cpuinfo (the platform's description where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The vector extensions that decide which kernels and precisions a CPU runs (/proc/cpuinfo flags).
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in VECTOR_FLAGS if f in have]
    except OSError:
        pass
    return []


def w2v_version() -> str:
    """The version in this tree's pyproject.toml (the installed distribution's when there is none)."""
    try:
        import tomllib

        return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, ImportError, ValueError):
        try:
            return metadata.version("w2v")
        except metadata.PackageNotFoundError:
            return "unknown"


def library_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> Optional[str]:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def command_line(name: str, options: Iterable[str] = ()) -> str:
    """The command that reproduces a run: benchmark environment variables, then ``python -m bench``."""
    env = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIX)]
    return " ".join([*env, "python -m bench", *(shlex.quote(a) for a in [name, *options])])


def run_context(command: str) -> dict:
    """What every record of one run shares; taken before the run starts (the load average too)."""
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "w2v_version": w2v_version(),
        "commit": git_commit(),
        "versions": library_versions(),
        "command": command,
        "load": [round(x, 2) for x in os.getloadavg()],
    }


def flatten(result: Any, prefix: str = "") -> dict:
    """Nested dicts to ``{"a.b.c": leaf}``; lists and scalars are leaves."""
    if not isinstance(result, dict):
        return {prefix or "value": result}
    out: dict = {}
    for key, value in result.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def unit_of(figure: str, units: Optional[dict] = None) -> Optional[str]:
    if units and figure in units:
        return units[figure]
    last = figure.rsplit(".", 1)[-1].lower()
    for pattern, unit in NAME_UNITS:
        if re.search(pattern, last):
            return unit
    return None


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def append_records(path: Path, bench: str, result: Any, context: dict, units: Optional[dict] = None) -> int:
    """Append one line per figure of ``result``; returns how many. The file is appended in one write."""
    lines = []
    for figure, value in flatten(result).items():
        record = {"bench": bench, "figure": figure, "value": _jsonable(value)}
        unit = unit_of(figure, units)
        if unit:
            record["unit"] = unit
        record.update(context)
        lines.append(json.dumps(record, sort_keys=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return len(lines)


def read_records(path: Path) -> list[dict]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON line: {e}") from None
    return out


# The address of a record in a docs table row's last cell: `name.jsonl @ 2026-12-05T09:10:03Z`.
ADDRESS = re.compile(r"`([\w-]+)\.jsonl @ (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)`")


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}" if abs(value) >= 1e-4 or value == 0 else f"{value:.3g}"
    return str(value)


def markdown(records: list[dict], figures: Optional[list[str]] = None) -> str:
    """A run's header (machine, date, versions, command, load) and a table of its figures."""
    if not records:
        return ""
    first = records[0]
    libs = ", ".join(f"{k} {v}" for k, v in first["versions"].items())
    head = [
        f"- machine: {first['cpu_model']}"
        + (f" ({', '.join(first['cpu_flags'])})" if first.get("cpu_flags") else "")
        + f", {first['cores']} cores; load average at start "
        f"{' / '.join(str(x) for x in first['load'])} (1 / 5 / 15 min)",
        f"- date: {first['date']}; w2v {first['w2v_version']}"
        + (f" (commit {first['commit'][:12]}{'-dirty' if first['commit'].endswith('-dirty') else ''})"
           if first.get("commit") else ""),
        f"- versions: {libs}",
        f"- command: `{first['command']}`",
        "",
        "| figure | value | unit | record |",
        "|---|---|---|---|",
    ]
    by_figure = {r["figure"]: r for r in records}
    rows = []
    for figure in figures or list(by_figure):
        r = by_figure[figure]
        rows.append(f"| `{figure}` | {format_value(r['value'])} | {r.get('unit', '')} | "
                    f"`{r['bench']}.jsonl @ {r['date']}` |")
    return "\n".join(head + rows) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.records",
                                     description="List a benchmark's recorded runs or print one as a docs table.")
    parser.add_argument("name", help="benchmark name (bench/results/NAME.jsonl)")
    parser.add_argument("--run", metavar="DATE", help="the run's date (its records' `date`); default: the latest")
    parser.add_argument("--figures", nargs="+", metavar="FIGURE", help="these figures, in this order (default: all)")
    parser.add_argument("--list", action="store_true", help="list the runs (date, command, load) and stop")
    args = parser.parse_args(argv)
    path = RESULTS / f"{args.name}.jsonl"
    if not path.exists():
        print(f"no records: {path}", file=sys.stderr)
        return 2
    records = read_records(path)
    runs: dict = {}
    for r in records:
        runs.setdefault(r["date"], []).append(r)
    if args.list:
        for date, rs in runs.items():
            print(f"{date}  load {rs[0]['load']}  {len(rs)} figures  {rs[0]['command']}")
        return 0
    date = args.run or max(runs)
    if date not in runs:
        print(f"no run {date} in {path}; have: {', '.join(runs)}", file=sys.stderr)
        return 2
    missing = [f for f in args.figures or [] if f not in {r['figure'] for r in runs[date]}]
    if missing:
        print(f"not in run {date}: {', '.join(missing)}", file=sys.stderr)
        return 2
    sys.stdout.write(markdown(runs[date], args.figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
