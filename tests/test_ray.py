"""`w2v transcribe --ray` on a real local Ray cluster (a head and a second node, 127.0.0.1, in a
network namespace of its own), against single-host `w2v transcribe --format jsonl`.

The end-to-end test speaks a few dozen short espeak-ng sentences (16 kHz WAV, 8 kHz stereo, one
recording longer than the model's window), mixes in corrupt inputs, and runs the Ray path on the
first chunk of the listing while one model actor (and a decode task's worker) is killed with
SIGKILL, then on the whole listing
(a resume: the finished chunk is skipped, a stale temporary shard is ignored), then once more (no
work). Every transcript must equal single-host's object for the same file, every good file and
every bad file must appear exactly once, the bad ones with an error.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.ray_helpers import LocalCluster, available
from tests.serve_helpers import espeak
from w2v_serve.listing import ListingError, iter_listing

BATCH = 2                   # --batch-size: a chunk is 16 x 2 = 32 inputs
WORDS = ["red", "green", "blue", "yellow", "black", "white", "small", "large", "happy", "quiet"]
NOUNS = ["cat", "dog", "house", "river", "garden", "window", "table", "doctor"]
VOICES = ["en-us", "en-gb", "en-us+f3", "en-us+m3", "en-029", "en-gb-scotland"]
N_SPEECH = 42


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "w2v_serve.cli", "transcribe", *args]


def _env() -> dict:
    root = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
            "W2V_NO_PROGRESS": ""}


def _rows(directory: Path) -> list[dict]:
    return [json.loads(line) for shard in sorted(directory.glob("part-*.jsonl")) for line in shard.open()]


# ---------------------------------------------------------------------------- listings (no Ray)
def test_listing_kinds(tmp_path):
    """Plain lists as given, fairseq .tsv under its root, .jsonl relative to the manifest."""
    plain = tmp_path / "list.txt"
    plain.write_text("a.wav\n\n/abs/b.flac\r\n")
    assert list(iter_listing(str(plain))) == ["a.wav", "/abs/b.flac"]
    tsv = tmp_path / "train.tsv"
    tsv.write_text("/data/root\nx/1.wav\t16000\ny/2.wav\t8000\n")
    assert list(iter_listing(str(tsv))) == ["/data/root/x/1.wav", "/data/root/y/2.wav"]
    jl = tmp_path / "m.jsonl"
    jl.write_text('{"path": "c.wav", "text": "hi"}\n{"path": "/d.wav"}\n')
    assert list(iter_listing(str(jl))) == [str(tmp_path / "c.wav"), "/d.wav"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "ok.wav"}\n{"nopath": 1}\n')
    with pytest.raises(ListingError, match=r"bad.jsonl:2"):
        list(iter_listing(str(bad)))


def test_ray_missing_gives_a_clear_message(tmp_path):
    """Without the extra, --ray says how to install it (exit 2); the single-host path imports no ray."""
    wav = espeak("hello world", tmp_path / "a.wav")
    block = ("import sys\nclass B:\n  def find_spec(self, name, path=None, target=None):\n"
             "    if name == 'ray' or name.startswith('ray.'): raise ImportError('blocked: ' + name)\n"
             "sys.meta_path.insert(0, B())\nfrom w2v_serve.cli import main\nrc = main(sys.argv[1:])\n"
             "assert 'ray' not in sys.modules\nsys.exit(rc)\n")
    r = subprocess.run([sys.executable, "-c", block, "transcribe", "--ray", "local", "--output-dir",
                        str(tmp_path / "o"), str(wav)], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 2 and "pip install 'w2v[ray]'" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-c", block, "transcribe", "--decoder", "greedy", "--format", "jsonl", str(wav)],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["text"], r.stderr


# ---------------------------------------------------------------------------- the cluster
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """N_SPEECH spoken files (some 8 kHz stereo, one over the 30 s window) and four bad inputs,
    interleaved, in a listing file."""
    d = tmp_path_factory.mktemp("ray_speech")
    rng = np.random.default_rng(0)
    good = []
    for i in range(N_SPEECH):
        text = f"the {WORDS[i % len(WORDS)]} {NOUNS[(i * 3) % len(NOUNS)]} is number {i}"
        path = espeak(text, d / f"s{i:02d}.wav", voice=VOICES[i % len(VOICES)], speed=int(rng.integers(150, 200)))
        if i % 7 == 3:                  # 8 kHz stereo: the loader resamples and downmixes
            audio, sr = sf.read(path, dtype="float32")
            audio = audio[:: 2]
            path.unlink()
            path = d / f"s{i:02d}_8k.flac"
            sf.write(path, np.stack([audio, 0.5 * audio], axis=1), sr // 2)
        good.append(str(path))
    parts = [sf.read(p, dtype="float32")[0] for p in good[:14] if p.endswith(".wav")]
    long_path = d / "long.wav"                       # > 30 s: windows, segments
    sf.write(long_path, np.concatenate(parts + parts)[: 16000 * 36], 16000)
    good[20] = str(long_path)
    (d / "garbage.wav").write_bytes(b"RIFF" + bytes(rng.integers(0, 256, 3000, dtype=np.uint8)))
    (d / "empty.wav").write_bytes(b"")
    (d / "notes.flac").write_text("not audio at all\n")
    bad = [str(d / "garbage.wav"), str(d / "empty.wav"), str(d / "notes.flac"), str(d / "missing.wav")]
    inputs = list(good)
    for k, b in enumerate(bad):                      # mixed in: two in the first chunk, two after
        inputs.insert(5 + 11 * k, b)
    listing = d / "inputs.txt"
    listing.write_text("".join(p + "\n" for p in inputs))
    prefix = d / "first_chunk.txt"
    prefix.write_text("".join(p + "\n" for p in inputs[: 16 * BATCH]))
    return {"dir": d, "inputs": inputs, "bad": set(bad), "listing": listing, "prefix": prefix}


@pytest.fixture(scope="module")
def single_host(corpus):
    r = subprocess.run(_cli("--format", "jsonl", "--batch-size", str(BATCH), "--threads", "1",
                            "--files-from", str(corpus["listing"])),
                       capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 1, r.stderr            # the bad inputs fail; the rest run
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["path"] for row in rows] == corpus["inputs"]
    return {row["path"]: row for row in rows}


@pytest.fixture(scope="module")
def cluster():
    why = available()
    if why:
        pytest.skip(why)
    with LocalCluster(node_cpus=(2, 2)) as c:
        yield c


def _kill_actor_midway(cluster: LocalCluster, run: subprocess.Popen, timeout: float = 120) -> int:
    """SIGKILL one model actor's process once it runs and the driver still waits for results;
    then a decode task's worker too, if one is running by then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and run.poll() is None:
        pids = cluster.find("AcousticModel")
        if pids:
            time.sleep(1.0)              # it has loaded the model and taken work
            if run.poll() is None:
                os.kill(pids[0], signal.SIGKILL)
                for _ in range(20):
                    tasks = cluster.find("decode_stage")
                    if tasks:
                        os.kill(tasks[0], signal.SIGKILL)
                        break
                    time.sleep(0.1)
                return pids[0]
        time.sleep(0.1)
    raise AssertionError("no model actor ran while the job was running")


@pytest.mark.slow
def test_ray_matches_single_host_through_a_kill_and_a_resume(corpus, single_host, cluster, tmp_path):
    out = tmp_path / "out"
    common = ["--ray", cluster.address, "--format", "jsonl", "--output-dir", str(out),
              "--batch-size", str(BATCH), "--threads", "1"]

    # 1. The first chunk only (an interrupted job's state), one model actor killed midway.
    run = cluster.popen(_cli(*common, "--files-from", str(corpus["prefix"])),
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = _kill_actor_midway(cluster, run)
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 1, stderr             # two bad inputs in the first chunk
    assert killed not in cluster.pids()
    first = _rows(out)
    assert sorted(r["path"] for r in first) == sorted(corpus["inputs"][: 16 * BATCH])
    assert "transcribe (ray): files" in stderr     # the progress view

    # 2. The whole listing: the finished chunk is skipped; a stale temporary shard is ignored.
    (out / ".part-stale-00000.jsonl.tmp").write_text('{"path": "/x.wav", "text": "half writ')
    r = cluster.run(_cli(*common, "--files-from", str(corpus["listing"])), capture_output=True, text=True,
                    timeout=300)
    assert r.returncode == 1, r.stderr
    assert f"({16 * BATCH} done before)" in r.stderr
    assert not list(out.glob(".*.tmp"))
    rows = _rows(out)
    assert len(rows) == len(corpus["inputs"])                       # every input exactly once
    by_path = {row["path"]: row for row in rows}
    assert set(by_path) == set(corpus["inputs"])
    for path, row in by_path.items():
        if path in corpus["bad"]:
            assert set(row) == {"path", "error"} and path in row["error"]
        else:
            assert "error" not in row and row["text"]
        assert row == single_host[path]                             # the same object as single-host

    # 3. Again: nothing left to do; the recorded failures still make it exit 1.
    shards = sorted(out.glob("part-*.jsonl"))
    r = cluster.run(_cli(*common, "--files-from", str(corpus["listing"])), capture_output=True, text=True,
                    timeout=300)
    assert r.returncode == 1 and f"({len(corpus['inputs'])} done before)" in r.stderr, r.stderr
    assert sorted(out.glob("part-*.jsonl")) == shards


@pytest.mark.slow
def test_ray_parquet_and_subtitles(corpus, cluster, tmp_path):
    """--format parquet: Parquet shards holding the JSON lines' rows; --format srt: one file per input."""
    import pyarrow.parquet as pq

    files = corpus["inputs"][:6]
    out = tmp_path / "pq"
    r = cluster.run(_cli("--ray", cluster.address, "--format", "parquet", "--output-dir", str(out),
                         "--batch-size", str(BATCH), *files), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr               # inputs[5] is a bad one
    by_path = {row["path"]: row for row in _rows(out)}
    records = [rec for shard in sorted(out.glob("part-*.parquet")) for rec in pq.read_table(shard).to_pylist()]
    assert sorted(rec["path"] for rec in records) == sorted(files) == sorted(by_path)
    for rec in records:
        ref = by_path[rec["path"]]
        assert rec["error"] == ref.get("error") and rec["text"] == ref.get("text")
        if rec["error"] is None:
            assert rec["duration_s"] == ref["duration_s"] and rec["words"] == ref["words"]
    srt = tmp_path / "srt"
    r = cluster.run(_cli("--ray", cluster.address, "--format", "srt", "--output-dir", str(srt),
                         "--batch-size", str(BATCH), files[0]), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    words = _rows(srt)[0]["words"]
    cue = (srt / (Path(files[0]).stem + ".srt")).read_text()
    assert cue.startswith("1\n00:00:") and " ".join(w["word"] for w in words[:2]) in cue
