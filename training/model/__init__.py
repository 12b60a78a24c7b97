"""wav2vec 2.0 in PyTorch: components, quantizer, the model and its builders."""

from training.model.components import lengths_to_mask, normalize_waveform
from training.model.model import (
    Features,
    Wav2Vec2Model,
    build_model,
    data2vec_audio_base,
    hubert_base,
    hubert_large,
    mms_1b,
    wav2vec2_base,
    wav2vec2_large,
    wav2vec2_small,
    wavlm_base,
    wavlm_large,
)
from training.model.quantizer import GumbelVectorQuantizer, QuantizerOutput, gumbel_temperature

__all__ = [
    "Features", "GumbelVectorQuantizer", "QuantizerOutput", "Wav2Vec2Model", "build_model",
    "data2vec_audio_base", "gumbel_temperature", "hubert_base", "hubert_large", "lengths_to_mask", "mms_1b", "normalize_waveform", "wav2vec2_base",
    "wav2vec2_large", "wav2vec2_small", "wavlm_base", "wavlm_large",
]
