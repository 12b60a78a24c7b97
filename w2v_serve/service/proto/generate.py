"""Regenerate w2v_pb2.py and w2v_pb2_grpc.py from w2v.proto (``make proto``).

    python -m w2v_serve.service.proto.generate            # write beside the .proto
    python -m w2v_serve.service.proto.generate --out DIR  # write elsewhere (the reproducibility test)

protoc runs from the project root with the .proto named by its package path, so the generated
service module imports ``w2v_serve.service.proto.w2v_pb2`` (an absolute import that works installed).
grpcio-tools (the 'test' extra) is needed only here, never at run time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]   # the project root: protoc names the .proto by its package path
PROTO = HERE / "w2v.proto"
GENERATED = ("w2v_pb2.py", "w2v_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        include = str(Path(protoc.__file__).parent / "_proto")
        rel = PROTO.relative_to(ROOT)
        code = protoc.main(["grpc_tools.protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={tmp}",
                            f"--grpc_python_out={tmp}", str(rel)])
        if code != 0:
            raise SystemExit(f"protoc failed on {rel} (exit {code})")
        written = []
        for name in GENERATED:
            target = out_dir / name
            shutil.copyfile(Path(tmp) / rel.parent / name, target)
            written.append(target)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: beside the .proto)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
