"""The automatic precision check (w2v_serve.precision.ensure_precision_record): a model directory
without a record for this kind of CPU gets one, once, at export or at first use with precision
auto; the engine then runs what the record says is fastest among the precisions that kept the
answers; an unreadable record is ignored with a warning and redone; a read-only model directory
keeps its record in the user cache; a flag and an environment variable skip it.

The independent reference for "what the check picks" is the record itself: the fastest (lowest
real-time factor) runtime/precision among those marked passed, recomputed here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.serve_helpers import tiny_model_dir
from w2v_serve import precision as precision_mod
from w2v_serve.decoding import DecoderOptions
from w2v_serve.engine import EngineOptions, precision_cache_path, same_machine
from w2v_serve.model_dir import PRECISION_CHECK_NAME, ModelDirectory
from w2v_serve.transcribe import Transcriber

pytestmark = pytest.mark.skipif(not precision_mod.espeak_available(), reason="espeak-ng is not installed")
GREEDY = DecoderOptions(method="greedy")


@pytest.fixture
def checked_env(monkeypatch, tmp_path):
    """The check on (the suite turns it off), and a private user cache."""
    monkeypatch.setenv(precision_mod.AUTO_CHECK_ENV, "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def fresh_model(tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir("attention"), dst)
    (dst / PRECISION_CHECK_NAME).unlink(missing_ok=True)
    return dst


def expected_choice(record: dict) -> tuple[str, str]:
    passed = [(r["rtf"], rt, p) for rt, res in record["results"].items() for p, r in res.items()
              if r.get("passed") and r.get("rtf")]
    _, rt, p = min(passed)
    return rt, p


def check_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("w2v: runs ")]


@pytest.mark.slow
def test_first_use_checks_once_and_the_engine_runs_the_choice(checked_env, capsys):
    model = fresh_model(checked_env)
    with Transcriber(model, decoder=GREEDY) as t:
        chosen = (t.engine.runtime, t.engine.precision)
    lines = check_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines                      # told once, on one line
    record_file = model / PRECISION_CHECK_NAME
    [record] = ModelDirectory.load(model).precision_checks
    assert same_machine(record) and record["trigger"] == "first use"
    assert record["results"]["onnxruntime"]["fp32"]["passed"]
    assert chosen == expected_choice(record)
    assert f"runs {chosen[0]} {chosen[1]}" in lines[0] and str(record_file) in lines[0]

    before = record_file.read_bytes()
    with Transcriber(model, decoder=GREEDY) as t:       # reused: no second check, same choice
        assert (t.engine.runtime, t.engine.precision) == chosen
    assert capsys.readouterr().err == ""
    assert record_file.read_bytes() == before


@pytest.mark.slow
@pytest.mark.parametrize("content", [
    "{not json",
    json.dumps({"format": "w2v-precision-checks", "version": 1,
                "records": [{"machine": None, "results": {"onnxruntime": {"fp32": {"passed": True, "rtf": "fast"}}}}]}),
], ids=["not-json", "malformed-record"])
def test_an_unreadable_record_is_ignored_with_a_warning_and_redone(checked_env, capsys, content):
    model = fresh_model(checked_env)
    (model / PRECISION_CHECK_NAME).write_text(content)
    with Transcriber(model, decoder=GREEDY) as t:
        chosen = (t.engine.runtime, t.engine.precision)
    err = capsys.readouterr().err
    assert "warning: precision check record" in err and "ignored" in err
    assert len(check_lines(err)) == 1
    [record] = ModelDirectory.load(model).precision_checks       # valid again: the check's record only
    assert same_machine(record) and chosen == expected_choice(record)


@pytest.mark.slow
def test_a_read_only_model_directory_keeps_the_record_in_the_user_cache(checked_env, capsys, monkeypatch):
    model = fresh_model(checked_env)
    real_write = precision_mod.write_text_atomic

    def write(path, text):         # the fault: the model directory refuses writes (tests run as root)
        if Path(path).parent == model:
            raise PermissionError(13, "Permission denied", str(path))
        return real_write(path, text)

    monkeypatch.setattr(precision_mod, "write_text_atomic", write)
    with Transcriber(model, decoder=GREEDY) as t:
        chosen = (t.engine.runtime, t.engine.precision)
    cached = precision_cache_path(ModelDirectory.load(model))
    assert not (model / PRECISION_CHECK_NAME).exists()
    assert cached.is_file() and cached.is_relative_to(checked_env / "cache" / "w2v")
    assert str(cached) in check_lines(capsys.readouterr().err)[0]
    [record] = json.loads(cached.read_text())["records"]
    assert chosen == expected_choice(record)
    with Transcriber(model, decoder=GREEDY) as t:       # read back from the cache: no second check
        assert (t.engine.runtime, t.engine.precision) == chosen
    assert capsys.readouterr().err == ""


def test_no_check_when_a_precision_is_given_or_the_environment_says_so(checked_env, capsys, monkeypatch):
    model = fresh_model(checked_env)
    with Transcriber(model, decoder=GREEDY, engine_options=EngineOptions(variant="fp32")) as t:
        assert t.engine.precision == "fp32"
    monkeypatch.setenv(precision_mod.AUTO_CHECK_ENV, "0")
    with Transcriber(model, decoder=GREEDY) as t:
        assert t.engine.precision == "fp32"              # no record: fp32
    assert not (model / PRECISION_CHECK_NAME).exists()
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_export_runs_the_check_and_the_flag_skips_it(checked_env, capsys):
    import torch

    from tests.serve_helpers import TINY, VOCAB
    from training.checkpoint import Checkpoint
    from training.model import wav2vec2_small
    from w2v_serve.cli import main as w2v

    torch.manual_seed(3)
    ckpt = checked_env / "model.ckpt"
    Checkpoint.from_model(wav2vec2_small(vocab_size=len(VOCAB), **TINY).eval(), VOCAB).save(ckpt)
    out = checked_env / "exported"
    assert w2v(["export", str(ckpt), "--out", str(out), "--no-check"]) == 0
    [record] = ModelDirectory.load(out).precision_checks
    assert record["trigger"] == "export" and same_machine(record)
    assert len(check_lines(capsys.readouterr().err)) == 1
    # A re-export drops the record of the weights exported before; the flag skips the check.
    assert w2v(["export", str(ckpt), "--out", str(out), "--no-check", "--no-precision-check"]) == 0
    assert not (out / PRECISION_CHECK_NAME).exists()
    assert check_lines(capsys.readouterr().err) == []
