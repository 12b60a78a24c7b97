"""Batches for training: length-bucketed, capped by total samples, deterministic per epoch.

* ``BucketBatcher`` groups utterances of similar length so that rows × longest row stays under
  ``max_tokens`` (fairseq's ``max_tokens``), shuffles the batch order per epoch from the seed, and
  gives each distributed rank its share. A batch list is a pure function of (seed, epoch), so a
  run resumes at (epoch, batches consumed) with nothing else to restore.
* ``AudioDataset`` loads with ``w2v_serve.audio.load_audio`` (any format and rate, resampled to
  16 kHz). A missing or corrupt file is reported once and dropped from its batch.
* ``PretrainCollater`` crops every row to the batch's shortest one (at most ``max_sample_size``)
  at a random offset; ``FinetuneCollater`` pads and encodes the transcripts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from training.manifest import Utterance
from w2v_serve.audio import AudioError, load_audio
from w2v_serve.vocab import Vocabulary

log = logging.getLogger("w2v.data")


@dataclass
class Batch:
    indices: list[int]                 # manifest rows in this batch (failed files removed)
    waveforms: Tensor                  # [B, L] float32, 16 kHz
    lengths: Tensor                    # [B] valid samples
    targets: Optional[Tensor] = None   # [Σ U_b] concatenated label ids (fine-tuning)
    target_lengths: Optional[Tensor] = None
    texts: Optional[list[str]] = None

    def to(self, device: torch.device) -> "Batch":
        move = (lambda t: t.to(device, non_blocking=True) if t is not None else None)
        return Batch(self.indices, move(self.waveforms), move(self.lengths), move(self.targets),
                     move(self.target_lengths), self.texts)

    @property
    def num_samples(self) -> int:
        return int(self.lengths.sum())


class BucketBatcher:
    """Length-bucketed batches under a cap on total (padded) samples."""

    def __init__(self, sizes: Sequence[int], max_tokens: int, seed: int, max_batch_size: int = 0,
                 shuffle: bool = True) -> None:
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.max_tokens = max_tokens
        self.max_batch_size = max_batch_size
        self.seed = seed
        self.shuffle = shuffle
        if len(self.sizes) and self.sizes.max() > max_tokens:
            raise ValueError(f"max_tokens {max_tokens} is smaller than the longest utterance kept "
                             f"({int(self.sizes.max())} samples); raise data.max_tokens or lower data.max_sample_size")

    def batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.sizes)
        # Shuffle, then a stable sort by length: equal lengths land in a different order each epoch.
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        order = order[np.argsort(self.sizes[order], kind="stable")]
        batches: list[list[int]] = []
        current: list[int] = []
        for i in order.tolist():
            longest = int(self.sizes[i])  # ascending: the newcomer is the longest
            if current and ((len(current) + 1) * longest > self.max_tokens
                            or (self.max_batch_size and len(current) >= self.max_batch_size)):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        if self.shuffle:
            batches = [batches[j] for j in rng.permutation(len(batches))]
        return batches

    def shard(self, epoch: int, rank: int, world_size: int) -> list[list[int]]:
        """This rank's batches: every world_size-th, the same count on every rank."""
        batches = self.batches(epoch)
        usable = len(batches) - len(batches) % world_size
        if usable == 0:
            raise ValueError(f"{len(batches)} batch(es) cannot feed {world_size} processes; lower data.max_tokens")
        return batches[rank:usable:world_size]


class AudioDataset(torch.utils.data.Dataset):
    """Manifest rows -> (index, float32 waveform or None, error or None)."""

    def __init__(self, utterances: Sequence[Utterance]) -> None:
        self.utterances = list(utterances)
        self._reported: set[int] = set()

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int):
        utt = self.utterances[index]
        try:
            return index, load_audio(utt.path), None
        except AudioError as e:
            if index not in self._reported:
                self._reported.add(index)
                log.warning("skipping %s", e)
            return index, None, str(e)


def crop_offsets(seed: int, epoch: int, indices: Sequence[int], lengths: Sequence[int], target: int) -> list[int]:
    """Random crop starts, a pure function of (seed, epoch, utterance): the same on resume and in
    any worker process."""
    out = []
    for i, n in zip(indices, lengths):
        rng = np.random.default_rng([seed, epoch, int(i), 7919])
        out.append(int(rng.integers(0, n - target + 1)) if n > target else 0)
    return out


class PretrainCollater:
    def __init__(self, seed: int, epoch: int, max_sample_size: int, crop_to_shortest: bool = True) -> None:
        self.seed, self.epoch = seed, epoch
        self.max_sample_size = max_sample_size
        self.crop_to_shortest = crop_to_shortest

    def __call__(self, items) -> Optional[Batch]:
        items = [(i, w) for i, w, _ in items if w is not None and len(w) > 0]
        if not items:
            return None
        indices = [i for i, _ in items]
        lengths = [len(w) for _, w in items]
        target = min(lengths) if self.crop_to_shortest else max(lengths)
        target = min(target, self.max_sample_size)
        starts = crop_offsets(self.seed, self.epoch, indices, lengths, target)
        rows = [w[s:s + target] for (_, w), s in zip(items, starts)]
        return _pad(indices, rows)


class FinetuneCollater:
    def __init__(self, vocab: Vocabulary, texts: Sequence[Optional[str]]) -> None:
        self.vocab = vocab
        self.texts = texts

    def __call__(self, items) -> Optional[Batch]:
        kept = [(i, w) for i, w, _ in items if w is not None and len(w) > 0]
        if not kept:
            return None
        batch = _pad([i for i, _ in kept], [w for _, w in kept])
        texts = [self.texts[i] or "" for i in batch.indices]
        encoded = [self.vocab.encode(t) for t in texts]
        batch.targets = torch.tensor([t for e in encoded for t in e], dtype=torch.long)
        batch.target_lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
        batch.texts = [self.vocab.decode(e) for e in encoded]  # the reference as the vocabulary sees it
        return batch


def _pad(indices: list[int], rows: list[np.ndarray]) -> Batch:
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    waveforms = torch.zeros(len(rows), int(lengths.max()), dtype=torch.float32)
    for b, r in enumerate(rows):
        waveforms[b, : len(r)] = torch.from_numpy(np.ascontiguousarray(r, dtype=np.float32))
    return Batch(indices, waveforms, lengths)


def make_loader(dataset: AudioDataset, batches: list[list[int]], collate, num_workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers,
                                       persistent_workers=False, prefetch_factor=2 if num_workers else None)


def filter_by_length(utterances: Sequence[Utterance], min_samples: int, max_samples: Optional[int]) -> list[int]:
    """Indices of utterances within the length limits (fairseq skips the others)."""
    return [i for i, u in enumerate(utterances)
            if u.num_samples >= min_samples and (max_samples is None or u.num_samples <= max_samples)]
