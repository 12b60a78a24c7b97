"""Run every benchmark module ``bench/bench_*.py`` (each has ``main() -> dict``), or those named.

    python -m bench                 # all
    python -m bench export pretrain # bench_export.py and bench_pretrain.py only
    python -m bench engine --quick  # names, then options for their main(argv)

Results are printed and written to ``bench/results/<name>.json`` with the machine's description.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


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
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    failed = []
    for name in chosen:
        print(f"\n=== bench {name} ===", flush=True)
        start = time.time()
        try:
            module = importlib.import_module(f"bench.bench_{name}")
            result = module.main(options) if options else module.main()
        except Exception as e:  # one broken benchmark does not hide the others
            print(f"bench {name} failed: {type(e).__name__}: {e}", file=sys.stderr)
            failed.append(name)
            continue
        command = f"python -m bench {' '.join([name, *options])}"
        record = {"bench": name, "machine": machine(), "seconds": round(time.time() - start, 1),
                  "command": command, "result": result}
        path = out_dir / f"{name}.json"
        if any(o.startswith("--skip-") for o in options) and path.exists() and isinstance(result, dict):
            # A partial run (--skip-...) replaces the parts it ran and keeps the others, each part
            # with the command and machine that measured it.
            old = json.loads(path.read_text())
            parts = {**old.get("parts", {}), **{k: {"command": command, "machine": record["machine"],
                                                    "date": time.strftime("%Y-%m-%d %H:%M")}
                                                 for k, v in result.items() if isinstance(v, dict)}}
            for k, v in old.get("result", {}).items():
                if isinstance(v, dict) and k not in result:
                    result[k] = v
                    parts.setdefault(k, {"command": old.get("command"), "machine": old.get("machine")})
            record["parts"] = parts
        path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
