"""wav2vec-U (Baevski et al. 2021, "Unsupervised Speech Recognition") on a pre-trained checkpoint,
after fairseq's ``examples/wav2vec/unsupervised``, sized for CPUs.

* :mod:`~training.wav2vec_u.phonemize` — unpaired text: espeak-ng phonemes, folding, inventory.
* :mod:`~training.wav2vec_u.features` — a Transformer block's output, k-means, PCA, merged and
  pooled segments.
* :mod:`~training.wav2vec_u.probe` — the gate: a linear CTC phone probe on the same features.
* :mod:`~training.wav2vec_u.gan` — generator, discriminator, penalties, training, decoding.
* :mod:`~training.wav2vec_u.lm` — the phone n-gram LM of the unsupervised selection metric.
* :mod:`~training.wav2vec_u.prepare`, :mod:`~training.wav2vec_u.commands` — ``w2v wav2vec-u``.

docs/wav2vec_u.md is the guide.
"""
