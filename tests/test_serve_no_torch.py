"""The runtime (w2v_serve) must run on a serving box without torch: no module of it imports torch."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import w2v_serve
names = sorted(m.name for m in pkgutil.walk_packages(w2v_serve.__path__, "w2v_serve.")
               if not m.name.endswith(".__main__"))   # running those starts the command
for name in names:
    importlib.import_module(name)
    if "torch" in sys.modules:
        raise SystemExit(f"importing {name} imported torch")
from w2v_serve.cli import build_parser
build_parser()
if "torch" in sys.modules:
    raise SystemExit("building the w2v parser imported torch")
print(len(names))
"""


def test_no_w2v_serve_module_imports_torch():
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout
    assert int(proc.stdout.split()[-1]) >= 8        # audio, vocab, model_dir, decoding, engine, ...
