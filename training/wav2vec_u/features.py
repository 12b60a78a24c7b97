"""Audio side of wav2vec-U: intermediate-layer features, k-means, PCA, segment pooling.

fairseq's ``prepare_audio.sh`` does, per split: ``wav2vec_extract_features.py`` (the output of
Transformer block ``--layer``, 0-based, of a pre-trained wav2vec 2.0), ``wav2vec_cluster_faiss.py``
(faiss k-means ``CLUS128`` on the raw training features), ``wav2vec_apply_cluster_faiss.py``
(a cluster id per frame), ``pca.py`` + ``apply_pca.py`` (PCA to 512 dims, learned on the training
features), ``merge_clusters.py --pooling mean`` (consecutive frames with the same cluster id
mean-pooled into one segment) and ``mean_pool.py`` (then every two adjacent segments averaged:
``--subsample-rate 0.5``, an odd tail padded with a copy of the last segment). This module is
the same pipeline in torch: :func:`layer_features`, :func:`kmeans`, :func:`assign`,
:func:`pca_fit` / :func:`pca_apply`, :func:`merge_clusters`, :func:`mean_pool`.

Features are stored as fairseq does: one ``SPLIT.npy`` (all frames, float32, concatenated) and
``SPLIT.lengths`` (frames per utterance, one per line) — :class:`FeatureSet`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from training.model import Wav2Vec2Model, lengths_to_mask


class FeatureError(ValueError):
    """A layer out of range, a PCA wider than the features, features that do not line up."""


# ---------------------------------------------------------------------------- the model's layers
def check_layer(model: Wav2Vec2Model, layer: int) -> int:
    n = len(model.encoder.layers)
    if not 0 <= layer < n:
        raise FeatureError(f"--layer {layer} is out of range: this model has {n} Transformer blocks "
                           f"(0-based: 0..{n - 1})")
    return layer


def default_layer(model: Wav2Vec2Model) -> int:
    """The middle block (0-based ``num_layers // 2``: block 2 of 4, 6 of 12, 12 of 24; fairseq's
    recipe uses 14 of LARGE's 24)."""
    return len(model.encoder.layers) // 2


@torch.no_grad()
def layer_features(model: Wav2Vec2Model, waveforms: Tensor, lengths: Optional[Tensor], layer: int) -> tuple[Tensor, Optional[Tensor]]:
    """The output of Transformer block ``layer`` (0-based) [B, T, d] and the frame lengths, as
    fairseq's ``extract_features(..., layer=layer)``: no masking, eval mode, and no final
    LayerNorm of a pre-LN encoder (fairseq applies it only when no layer is asked for)."""
    check_layer(model, layer)
    model.eval()
    features, frame_lengths = model.encode_features(waveforms, lengths)
    x, _ = model.feature_projection(features)
    enc = model.encoder
    attention_bias = None
    if frame_lengths is not None:
        valid = lengths_to_mask(frame_lengths, x.shape[1])
        x = x * valid.unsqueeze(-1).to(x.dtype)
        attention_bias = torch.zeros(valid.shape, dtype=x.dtype).masked_fill(~valid, torch.finfo(x.dtype).min)
        attention_bias = attention_bias[:, None, None, :]
    x = x + enc.pos_conv(x)
    if not enc.layer_norm_first:
        x = enc.layer_norm(x)
    for block in enc.layers[:layer + 1]:
        x = block(x, attention_bias)
    return x, frame_lengths


def trim_silence(audio: np.ndarray, threshold_db: float = -40.0, pad_s: float = 0.05, sr: int = 16000) -> np.ndarray:
    """Leading and trailing silence cut: keep from the first to the last 20 ms window whose RMS
    is within ``threshold_db`` of the loudest window, plus ``pad_s`` either side (a stand-in for
    fairseq's rVAD silence removal, which the synthetic audio does not need more than this)."""
    hop = sr // 50
    n = len(audio) // hop
    if n < 2:
        return audio
    rms = np.sqrt(np.mean(audio[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1))
    loud = np.nonzero(rms >= rms.max() * 10 ** (threshold_db / 20))[0]
    if len(loud) == 0:
        return audio
    pad = int(pad_s * sr)
    start = max(0, loud[0] * hop - pad)
    end = min(len(audio), (loud[-1] + 1) * hop + pad)
    return audio[start:end] if end - start >= 400 else audio


# ---------------------------------------------------------------------------- storage
@dataclass
class FeatureSet:
    """Per-utterance feature matrices stored concatenated (fairseq's ``.npy`` + ``.lengths``)."""

    data: np.ndarray          # [sum of lengths, D]
    lengths: list[int]

    def __post_init__(self) -> None:
        if sum(self.lengths) != len(self.data):
            raise FeatureError(f"{len(self.data)} feature rows but the lengths add up to {sum(self.lengths)}")
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.data[self.offsets[i]:self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    @property
    def dim(self) -> int:
        return int(self.data.shape[1])

    @classmethod
    def from_list(cls, items: Sequence[np.ndarray], dim: Optional[int] = None) -> "FeatureSet":
        if not items:
            return cls(np.zeros((0, dim or 0), np.float32), [])
        return cls(np.concatenate([np.asarray(x, np.float32) for x in items]), [len(x) for x in items])

    def save(self, prefix: str | Path) -> None:
        prefix = Path(prefix)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        np.save(f"{prefix}.npy", np.ascontiguousarray(self.data, dtype=np.float32))
        Path(f"{prefix}.lengths").write_text("".join(f"{n}\n" for n in self.lengths))

    @classmethod
    def load(cls, prefix: str | Path, mmap: bool = True) -> "FeatureSet":
        prefix = Path(prefix)
        npy, lengths = Path(f"{prefix}.npy"), Path(f"{prefix}.lengths")
        if not npy.exists() or not lengths.exists():
            raise FeatureError(f"{prefix}.npy/.lengths not found (run `w2v wav2vec-u prepare` first)")
        data = np.load(npy, mmap_mode="r" if mmap else None)
        return cls(data, [int(x) for x in lengths.read_text().split()])


# ---------------------------------------------------------------------------- k-means
def _sq_dists(x: Tensor, c: Tensor, c_sq: Tensor) -> Tensor:
    return (x * x).sum(1, keepdim=True) - 2.0 * x @ c.T + c_sq


def assign(x: Tensor, centroids: Tensor, chunk: int = 65536) -> tuple[Tensor, Tensor]:
    """Nearest centroid (squared Euclidean) of every row: (ids [N] int64, squared distances [N])."""
    c_sq = (centroids * centroids).sum(1).unsqueeze(0)
    ids, dists = [], []
    for start in range(0, len(x), chunk):
        d = _sq_dists(x[start:start + chunk], centroids, c_sq)
        m, i = d.min(1)
        ids.append(i)
        dists.append(m.clamp_min(0))
    if not ids:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0)
    return torch.cat(ids), torch.cat(dists)


def kmeans(x: Tensor, k: int, niter: int = 50, nredo: int = 1, seed: int = 0,
           max_points_per_centroid: int = 0) -> tuple[Tensor, float]:
    """Lloyd's k-means as faiss's ``Kmeans``: centroids start at ``k`` distinct random points,
    ``niter`` iterations, ``nredo`` restarts keeping the lowest objective (sum of squared
    distances to the nearest centroid, returned in float64). An empty cluster takes the point
    farthest from its centroid. ``max_points_per_centroid`` > 0 subsamples the training points to
    ``k`` times that (faiss's default is 256; fairseq passes the whole set). Returns
    (centroids [k, D] in x's dtype, objective)."""
    n = len(x)
    if n < k:
        raise FeatureError(f"k-means with {k} clusters needs at least {k} points, got {n}")
    gen = torch.Generator().manual_seed(seed)
    if max_points_per_centroid > 0 and n > k * max_points_per_centroid:
        x = x[torch.randperm(n, generator=gen)[: k * max_points_per_centroid]]
        n = len(x)
    best: Optional[Tensor] = None
    best_obj = math.inf
    for _ in range(max(1, nredo)):
        c = x[torch.randperm(n, generator=gen)[:k]].clone()
        for _ in range(niter):
            ids, dists = assign(x, c)
            counts = torch.bincount(ids, minlength=k)
            sums = torch.zeros_like(c, dtype=torch.float64).index_add_(0, ids, x.double())
            new = (sums / counts.clamp_min(1).unsqueeze(1).double()).to(x.dtype)
            empty = torch.nonzero(counts == 0).flatten()
            if len(empty):
                far = torch.argsort(dists, descending=True)[: len(empty)]
                new[empty] = x[far]
            c = new
        _, dists = assign(x, c)
        obj = float(dists.double().sum())
        if obj < best_obj:
            best, best_obj = c, obj
    assert best is not None
    return best, best_obj


# ---------------------------------------------------------------------------- PCA
def pca_fit(x: Tensor, dim: int, chunk: int = 65536) -> tuple[Tensor, Tensor]:
    """PCA as faiss's ``PCAMatrix`` (no whitening): the ``dim`` leading eigenvectors of the
    covariance (computed in float64). Returns ``(A [D, dim], b [dim])`` with the projection
    ``x @ A + b`` (fairseq's ``apply_pca.py``; ``b = -mean @ A`` centers). Each component's sign
    is fixed so that its largest-magnitude coefficient is positive."""
    n, d = x.shape
    if not 0 < dim <= d:
        raise FeatureError(f"PCA to {dim} dimensions needs 1..{d} (the features have {d})")
    if n < 2:
        raise FeatureError("PCA needs at least 2 feature rows")
    mean = torch.zeros(d, dtype=torch.float64)
    for start in range(0, n, chunk):
        mean += x[start:start + chunk].double().sum(0)
    mean /= n
    cov = torch.zeros(d, d, dtype=torch.float64)
    for start in range(0, n, chunk):
        xc = x[start:start + chunk].double() - mean
        cov += xc.T @ xc
    cov /= n
    evals, evecs = torch.linalg.eigh(cov)
    order = torch.argsort(evals, descending=True)[:dim]
    a = evecs[:, order]
    signs = torch.sign(a.gather(0, a.abs().argmax(0, keepdim=True))).squeeze(0)
    a = a * torch.where(signs == 0, torch.ones_like(signs), signs)
    b = -(mean @ a)
    return a.float(), b.float()


def pca_apply(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return x @ a + b


# ---------------------------------------------------------------------------- segments
def merge_clusters(feats: Tensor, clusters: Tensor) -> Tensor:
    """fairseq's ``merge_clusters.py --pooling mean``: each run of consecutive frames with the same
    cluster id becomes one row, the mean of the run. [T, D], [T] -> [S, D]."""
    if len(feats) != len(clusters):
        raise FeatureError(f"{len(feats)} frames but {len(clusters)} cluster ids")
    if len(feats) == 0:
        return feats
    _, counts = torch.unique_consecutive(clusters, return_counts=True)
    seg = torch.repeat_interleave(torch.arange(len(counts)), counts)
    sums = torch.zeros(len(counts), feats.shape[1], dtype=torch.float64).index_add_(0, seg, feats.double())
    return (sums / counts.unsqueeze(1).double()).to(feats.dtype)


def mean_pool(feats: Tensor, subsample_rate: float = 0.5) -> Tensor:
    """fairseq's ``mean_pool.py``: ``ceil(T * rate)`` outputs, each the mean of an equal run of
    adjacent rows; when ``T`` does not divide, the input is padded with copies of its last row
    (``--remove-extra`` off). With rate 0.5: pairs of adjacent segments averaged. [T, D] -> [T', D]."""
    t = len(feats)
    if t == 0:
        return feats
    target = math.ceil(t * subsample_rate)
    rem = t % target
    if rem > 0:
        add = target - rem
        feats = torch.cat([feats, feats[-1:].expand(add, -1)])
    return feats.reshape(target, -1, feats.shape[1]).mean(1)
