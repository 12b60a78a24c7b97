"""The reference pages cover what the code has, and README.md and docs/ read as reference."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from training import config as model_config
from training import train_config

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Development history in a reference page: a pattern and what it usually narrates.
HISTORY = [
    r"\bsession \d", r"\bthis session\b", r"\bthe issue\b", r"\bissue #?\d", r"\bas before\b",
    r"\bearlier versions?\b", r"\b(first|second|third|fourth|fifth) run\b", r"\bpreviously\b",
    r"\bthrowaway\b", r"\bwe tried\b", r"\bSIGSTOP\b", r"\bdevelopment box\b", r"\bno longer\b",
    r"\bwhat is next\b", r"\bgoal (was|met|not met|reached)\b",
]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_describe_the_project_not_its_history(page):
    text = page.read_text(encoding="utf-8")
    found = [(m.group(0), text.count("\n", 0, m.start()) + 1)
             for pattern in HISTORY for m in re.finditer(pattern, text, re.I)]
    assert not found, f"{page.name}: development history: " + ", ".join(f"{w!r} (line {n})" for w, n in found)


def test_every_training_key_is_in_the_configuration_reference():
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    sections = {"data": train_config.DataConfig, "optim": train_config.OptimConfig,
                "schedule": train_config.ScheduleConfig, "run": train_config.RunConfig,
                "task": train_config.PretrainTaskConfig, "model": model_config.ModelConfig}
    missing = [f"{name}.{f.name}" for name, cls in sections.items() for f in dataclasses.fields(cls)
               if f"`{name}.{f.name}`" not in text]
    missing += [f"task.{f.name}" for f in dataclasses.fields(train_config.FinetuneTaskConfig)
                if f"`task.{f.name}`" not in text]
    assert not missing, f"docs/configuration.md lacks {', '.join(missing)}"


def test_every_metric_is_in_the_configuration_reference():
    source = (ROOT / "w2v_serve" / "service" / "metrics.py").read_text(encoding="utf-8")
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    names = re.findall(r"(Counter|Gauge|Histogram)\(\s*\"(w2v_\w+)\"", source)
    assert names
    for kind, name in names:
        exposed = f"{name}_total" if kind == "Counter" else name
        assert f"`{exposed}`" in text, f"docs/configuration.md lacks the metric {exposed}"


def test_every_rpc_and_message_is_in_the_grpc_reference():
    proto = (ROOT / "w2v_serve" / "service" / "proto" / "w2v.proto").read_text(encoding="utf-8")
    text = (ROOT / "docs" / "grpc_api.md").read_text(encoding="utf-8")
    for name in re.findall(r"^\s*rpc (\w+)", proto, re.M) + re.findall(r"^message (\w+)", proto, re.M):
        assert f"`{name}`" in text, f"docs/grpc_api.md lacks {name}"


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, "broken links: " + ", ".join(broken)
