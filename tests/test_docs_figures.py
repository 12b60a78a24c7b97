"""Every figure the docs quote comes from a committed record.

A quoting table row starts with the figure's name in backticks and ends with its record: a
benchmark run, `` `name.jsonl @ DATE` `` (bench/results/name.jsonl), or the bundled model's card,
`` `w2v_serve/models/default/model_card.json` `` (the figure's name is its dotted key). The value
cell (the second) must equal the recorded value rounded to the digits printed (a value printed
with % is the recorded fraction × 100). A row with more than the four cells of a run's table names
the run's machine and command itself. docs/benchmarks.md must quote only such rows.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest

from bench.records import ADDRESS, RESULTS, append_records, flatten, markdown, read_records, run_context, unit_of

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")
CARD = "w2v_serve/models/default/model_card.json"
CARD_ADDRESS = re.compile(rf"`{re.escape(CARD)}`\s*$")


def _quoting_rows(page: Path) -> list[tuple[int, list[str]]]:
    rows = []
    for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("|") and (ADDRESS.search(line) or CARD_ADDRESS.search(line.strip().strip("|"))):
            rows.append((n, [c.strip() for c in line.strip().strip("|").split("|")]))
    return rows


def _matches(printed: str, value) -> bool:
    """``printed`` (as in the docs) equals ``value`` rounded to the digits printed."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return printed.strip("`") == str(value)
    m = NUMBER.search(printed.replace(",", ""))
    if not m:
        return False
    text = m.group(0)
    if printed.strip().endswith("%"):
        value = value * 100
    if "e" in text:
        return abs(float(text) - value) <= abs(value) * 1e-3
    decimals = len(text.split(".")[1]) if "." in text else 0
    return Decimal(text) == round(Decimal(repr(float(value))), decimals)


def _card_value(key: str):
    value = json.loads((ROOT / CARD).read_text(encoding="utf-8"))
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _records(name: str) -> list[dict]:
    path = RESULTS / f"{name}.jsonl"
    assert path.exists(), f"{path} is not committed"
    return read_records(path)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_quoted_figure_is_in_a_committed_record(page):
    problems = []
    for n, cells in _quoting_rows(page):
        figure = cells[0].strip("`")
        if cells[-1] == f"`{CARD}`":
            value = _card_value(figure)
            if value is None:
                problems.append(f"{page.name}:{n}: {figure} is not in {CARD}")
            elif not _matches(cells[1], value):
                problems.append(f"{page.name}:{n}: {figure} printed {cells[1]!r}, recorded {value!r}")
            continue
        name, date = ADDRESS.search(cells[-1]).groups()
        found = [r for r in _records(name) if r["date"] == date and r["figure"] == figure]
        if not found:
            problems.append(f"{page.name}:{n}: {figure} is not in {name}.jsonl's run {date}")
        elif not _matches(cells[1], found[0]["value"]):
            problems.append(f"{page.name}:{n}: {figure} printed {cells[1]!r}, recorded {found[0]['value']!r}")
        elif len(cells) > 4:
            row = "|".join(cells)
            for key in ("cpu_model", "command", "w2v_version"):
                if str(found[0][key]) not in row:
                    problems.append(f"{page.name}:{n}: the row does not name the run's {key} ({found[0][key]})")
    assert not problems, "\n".join(problems)


def test_benchmarks_page_quotes_figures_only_from_records():
    """Every table of docs/benchmarks.md with a value column is a record table."""
    page = ROOT / "docs" / "benchmarks.md"
    rows = _quoting_rows(page)
    assert rows, "docs/benchmarks.md quotes no recorded figure"
    for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) >= 2 and NUMBER.fullmatch(cells[1].replace(",", "")) and not ADDRESS.search(line):
            pytest.fail(f"docs/benchmarks.md:{n}: a figure without its record: {line}")


def test_committed_records_carry_machine_date_versions_and_command():
    files = sorted(RESULTS.glob("*.jsonl"))
    assert files, "no committed benchmark records"
    for path in files:
        for r in read_records(path):
            for key in ("bench", "figure", "value", "cpu_model", "cores", "date", "w2v_version", "versions",
                        "command", "load"):
                assert key in r, f"{path.name}: {r.get('figure')} lacks {key}"
            assert r["command"].startswith(("python -m bench", "W2V_BENCH_")), r["command"]
            assert "python" in r["versions"] and len(r["load"]) == 3


def test_records_round_trip_through_the_docs_table(tmp_path):
    """A run's records, rendered as a docs table, pass the same check the pages get."""
    result = {"streaming": {"default": {"vs_offline": 2.4512, "partial_latency_ms_p50": 15.04}},
              "model": "bundled", "concurrent_load": {4: 0.13}}
    path = tmp_path / "x.jsonl"
    context = run_context("python -m bench x --quick")
    assert append_records(path, "x", result, context) == 4
    assert append_records(path, "x", {"other": 1}, {**context, "date": "2000-01-01T00:00:00Z"}) == 1
    records = read_records(path)
    assert [r["figure"] for r in records[:4]] == ["streaming.default.vs_offline",
                                                  "streaming.default.partial_latency_ms_p50",
                                                  "model", "concurrent_load.4"]
    assert records[1]["unit"] == "ms" and records[0]["unit"] == "x" and "unit" not in records[2]
    assert records[0]["load"] == context["load"] and records[4]["date"] == "2000-01-01T00:00:00Z"
    table = markdown(records[:4])
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if ADDRESS.search(line)]
    assert len(rows) == 4
    for cells, r in zip(rows, records):
        assert cells[0] == f"`{r['figure']}`" and _matches(cells[1], r["value"]), cells
    assert not _matches("2.46", 2.4512) and _matches("2.45", 2.4512) and _matches("2.5", 2.4512)
    assert not _matches("15", 16.0)
    assert _matches("47.5%", 0.4749) and not _matches("47.4%", 0.4749)


def test_flatten_and_units():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}
    assert unit_of("x.final_latency_ms_p95") == "ms" and unit_of("x.offline_ms_per_audio_s") == "ms/s"
    assert unit_of("w2v greedy.wer") == "fraction" and unit_of("x.utterances") is None
    assert unit_of("x.wall_s") == "s" and unit_of("x.y", {"x.y": "MiB"}) == "MiB"
    json.dumps(run_context("python -m bench y"))  # the context is JSON as it is
