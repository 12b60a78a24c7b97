"""`w2v data subset`: the low-resource splits (10 min / 1 h / 10 h) of a labeled manifest."""

from __future__ import annotations

import pytest

from training.manifest import ManifestError, Utterance, labeled_subset, read_manifest
from w2v_serve.cli import main as w2v


def _utts(n: int, tmp_path) -> list[Utterance]:
    # Durations 1..n seconds, distinct texts: the subset can be checked by hand.
    return [Utterance(tmp_path / f"u{i}.wav", 16000 * (i + 1), f"word {i}") for i in range(n)]


def test_subset_reaches_the_duration_and_smaller_ones_nest(tmp_path):
    utts = _utts(40, tmp_path)
    small, large = labeled_subset(utts, 30 / 3600, seed=3), labeled_subset(utts, 200 / 3600, seed=3)
    # Stops at the first utterance that reaches the target: at least the target, less than target + longest.
    for subset, seconds in ((small, 30), (large, 200)):
        total = sum(u.num_samples for u in subset) / 16000
        assert seconds <= total < seconds + 40 and total - subset[-1].num_samples / 16000 < seconds
    assert large[: len(small)] == small                 # 10 min ⊂ 1 h with the same seed
    assert labeled_subset(utts, 200 / 3600, seed=4) != large
    assert len(labeled_subset(utts, 10.0)) == 40        # asking for more than there is: all of it
    with pytest.raises(ManifestError, match="positive"):
        labeled_subset(utts, 0)


def test_subset_command_writes_aligned_tsv_ltr_wrd(tmp_path):
    root = tmp_path / "audio"
    root.mkdir()
    (tmp_path / "train.tsv").write_text(f"{root}\n" + "".join(f"u{i}.wav\t{16000 * (i + 1)}\n" for i in range(10)))
    (tmp_path / "train.wrd").write_text("".join(f"w{i} x\n" for i in range(10)))
    (tmp_path / "train.ltr").write_text("".join(f"W {i} | X |\n" for i in range(10)))
    assert w2v(["data", "subset", str(tmp_path / "train.tsv"), "--hours", str(12 / 3600),
                "--out", str(tmp_path / "sub" / "train_12s")]) == 0
    sub = read_manifest(tmp_path / "sub" / "train_12s.tsv")
    full = {u.path: u for u in read_manifest(tmp_path / "train.tsv")}
    assert sum(u.num_samples for u in sub) >= 12 * 16000
    assert all(full[u.path] == u for u in sub)          # same files, lengths and transcripts
    words = (tmp_path / "sub" / "train_12s.wrd").read_text().splitlines()
    assert words == [full[u.path].text for u in sub]


def test_subset_of_a_missing_or_misaligned_manifest_is_a_clear_error(tmp_path, capsys):
    assert w2v(["data", "subset", str(tmp_path / "nope.tsv"), "--hours", "1", "--out", str(tmp_path / "x")]) == 2
    assert "no such manifest" in capsys.readouterr().err
    (tmp_path / "train.tsv").write_text(f"{tmp_path}\nu0.wav\t16000\nu1.wav\t16000\n")
    (tmp_path / "train.ltr").write_text("A |\n")           # one transcript for two utterances
    assert w2v(["data", "subset", str(tmp_path / "train.tsv"), "--hours", "1", "--out", str(tmp_path / "x")]) == 2
    assert "1 transcripts for 2 utterances" in capsys.readouterr().err
    assert not (tmp_path / "x.tsv").exists()
