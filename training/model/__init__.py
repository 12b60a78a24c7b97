"""wav2vec 2.0 in PyTorch: components, quantizer, the model and its builders."""

from training.model.components import lengths_to_mask, normalize_waveform
from training.model.model import (
    Features,
    Wav2Vec2Model,
    build_model,
    wav2vec2_base,
    wav2vec2_large,
    wav2vec2_small,
)
from training.model.quantizer import GumbelVectorQuantizer, QuantizerOutput, gumbel_temperature

__all__ = [
    "Features", "GumbelVectorQuantizer", "QuantizerOutput", "Wav2Vec2Model", "build_model",
    "gumbel_temperature", "lengths_to_mask", "normalize_waveform", "wav2vec2_base",
    "wav2vec2_large", "wav2vec2_small",
]
