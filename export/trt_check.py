"""Is an ONNX graph one TensorRT's ONNX parser will take?

Checks every node (subgraphs included) against the whitelist in ``trt_ops.txt`` (copied from
TensorRT's published operator support table) and the project's own rules, which are stricter
than the table:

* no data-dependent control flow (``Loop``, ``If``, ``Scan``): TensorRT accepts them but
  builds a slower engine with restrictions, and our graphs never need them;
* no data-dependent output shapes (``NonZero``, ``Unique``);
* no ``GroupNormalization``: BASE's GroupNorm(512, 512) is written as the per-channel
  normalization it is, which every TensorRT version and opset handles;
* opset >= 17 (the opset where LayerNormalization is an op) and only the default ONNX domain
  (``com.microsoft`` contrib ops are ONNX Runtime's, not TensorRT's).

    python -m export.trt_check DIR/model.onnx ...
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import onnx

WHITELIST_FILE = Path(__file__).with_name("trt_ops.txt")
MIN_OPSET = 17
CONTROL_FLOW = frozenset({"Loop", "If", "Scan"})
DATA_DEPENDENT_SHAPES = frozenset({"NonZero", "Unique"})
PROJECT_FORBIDDEN = frozenset({"GroupNormalization"})
DEFAULT_DOMAINS = ("", "ai.onnx")


class TrtCheckError(ValueError):
    """A graph that TensorRT's ONNX parser would reject, or that breaks the project's rules."""


@dataclass
class TrtReport:
    ops: Counter = field(default_factory=Counter)            # op type -> count, whole graph
    unsupported: list[str] = field(default_factory=list)     # not in TensorRT's table / other domain
    control_flow: list[str] = field(default_factory=list)    # Loop / If / Scan
    data_dependent: list[str] = field(default_factory=list)  # NonZero / Unique
    forbidden: list[str] = field(default_factory=list)       # the project's own rules
    opset: int = 0

    @property
    def ok(self) -> bool:
        return not (self.unsupported or self.control_flow or self.data_dependent or self.forbidden
                    or self.opset < MIN_OPSET)

    def problems(self) -> list[str]:
        out = []
        if self.opset < MIN_OPSET:
            out.append(f"opset {self.opset} < {MIN_OPSET}")
        for title, ops in (("not supported by TensorRT", self.unsupported),
                           ("data-dependent control flow", self.control_flow),
                           ("data-dependent output shape", self.data_dependent),
                           ("not allowed in w2v graphs", self.forbidden)):
            if ops:
                out.append(f"{title}: {', '.join(f'{op} x{self.ops[op]}' for op in sorted(set(ops)))}")
        return out

    def to_dict(self) -> dict:
        return {"ok": self.ok, "opset": self.opset, "problems": self.problems(),
                "ops": dict(sorted(self.ops.items()))}


@lru_cache(maxsize=1)
def supported_ops() -> frozenset[str]:
    lines = WHITELIST_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(s for s in (line.strip() for line in lines) if s and not s.startswith("#"))


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, descending into subgraphs (If branches, Loop/Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _nodes(g)


def check_model(model: onnx.ModelProto | str | Path) -> TrtReport:
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    report = TrtReport()
    report.opset = max((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), default=0)
    whitelist = supported_ops()
    for node in _nodes(model.graph):
        op = node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"
        report.ops[op] += 1
        if op not in whitelist:
            report.unsupported.append(op)
        if op in CONTROL_FLOW:
            report.control_flow.append(op)
        if op in DATA_DEPENDENT_SHAPES:
            report.data_dependent.append(op)
        if op in PROJECT_FORBIDDEN:
            report.forbidden.append(op)
    return report


def assert_trt_friendly(model: onnx.ModelProto | str | Path, name: str = "graph") -> TrtReport:
    report = check_model(model)
    if not report.ok:
        raise TrtCheckError(f"{name} is not TensorRT-friendly: " + "; ".join(report.problems()))
    return report


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m export.trt_check GRAPH.onnx ...", file=sys.stderr)
        return 2
    bad = 0
    for path in argv:
        report = check_model(path)
        status = "ok" if report.ok else "NOT OK: " + "; ".join(report.problems())
        print(f"{path}: {status}  ({sum(report.ops.values())} nodes, opset {report.opset})")
        bad += not report.ok
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
