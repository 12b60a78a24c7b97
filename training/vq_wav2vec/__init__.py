"""vq-wav2vec (Baevski et al. 2019), wav2vec 2.0's predecessor: conv encoder, Gumbel or k-means
quantizer, causal conv aggregator, future-step prediction loss; fairseq checkpoint import.
docs/vq_wav2vec.md describes it."""

from training.vq_wav2vec.config import VQWav2VecConfig, tiny_vq_wav2vec_config, vq_wav2vec_config
from training.vq_wav2vec.loss import (
    FuturePredictions,
    LossOutput,
    PredictionOutput,
    prediction_loss,
    sample_negative_indices,
    vq_wav2vec_loss,
)
from training.vq_wav2vec.model import VQWav2VecModel, VQWav2VecOutput, build_vq_wav2vec, vq_wav2vec, vq_wav2vec_tiny
from training.vq_wav2vec.quantizers import GumbelQuantizer, KmeansQuantizer, QuantizerOutput

__all__ = [
    "FuturePredictions", "GumbelQuantizer", "KmeansQuantizer", "LossOutput", "PredictionOutput",
    "QuantizerOutput", "VQWav2VecConfig", "VQWav2VecModel", "VQWav2VecOutput", "build_vq_wav2vec",
    "prediction_loss", "sample_negative_indices", "tiny_vq_wav2vec_config", "vq_wav2vec", "vq_wav2vec_config",
    "vq_wav2vec_loss", "vq_wav2vec_tiny",
]
