"""``w2v wav2vec-u prepare|probe|train|eval``: unsupervised speech recognition (wav2vec-U, Baevski
et al. 2021) on a pre-trained checkpoint's features. Parsers only: the handlers are in
training.wav2vec_u.commands (they need torch). docs/wav2vec_u.md is the guide."""

from __future__ import annotations

import argparse

from w2v_serve.cli import handler
from w2v_serve.cli.options import add_torch_threads_flag

_TARGET = "training.wav2vec_u.commands:"


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="phonemize unpaired text; features, k-means, PCA, segments of the audio",
                       description="Make a wav2vec-U work folder: phonemized text that is not in the corpus "
                                   "(espeak-ng, folded phones), the features of one Transformer block of a "
                                   "pre-trained checkpoint for the corpus's train and test utterances, k-means "
                                   "cluster ids, PCA, and the cluster-merged, pair-pooled segments the GAN reads.")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="pre-trained w2v checkpoint")
    p.add_argument("--corpus", required=True, metavar="DIR", help="corpus folder from `w2v data synth` (train.tsv, test.tsv)")
    p.add_argument("--out", required=True, metavar="WORK", help="work folder to write")
    p.add_argument("--layer", type=int, default=None, metavar="N",
                   help="0-based Transformer block whose output is used (default: the middle one, num_layers // 2)")
    p.add_argument("--clusters", type=int, default=64, metavar="K", help="k-means clusters (default 64; fairseq: 128)")
    p.add_argument("--kmeans-iters", type=int, default=50, metavar="N")
    p.add_argument("--kmeans-redo", type=int, default=1, metavar="N", help="k-means restarts (fairseq: 3)")
    p.add_argument("--pca-dim", type=int, default=128, metavar="D", help="PCA dimensions (default 128; fairseq: 512)")
    p.add_argument("--no-pool", action="store_true", help="skip the adjacent-pair mean pooling after the merge")
    p.add_argument("--voices", default="en-us", metavar="LIST",
                   help="espeak-ng voice-name prefixes to keep, comma-separated, or 'all' (default en-us)")
    p.add_argument("--max-train-utts", type=int, default=2000, metavar="N", help="0: all")
    p.add_argument("--max-test-utts", type=int, default=300, metavar="N", help="0: all")
    p.add_argument("--text-source", default="fortunes,wordnet", metavar="LIST",
                   help="built-in sentence sources for the unpaired text (training.synth's): fortunes, wordnet")
    p.add_argument("--text", action="append", default=[], metavar="FILE", help="text file(s) instead of --text-source")
    p.add_argument("--max-text-sentences", type=int, default=20000, metavar="N", help="0: all")
    p.add_argument("--min-phone-count", type=int, default=20, metavar="N",
                   help="phones rarer than this in the text are dropped with their sentences (fairseq's min_phones)")
    p.add_argument("--no-pauses", action="store_true", help="drop espeak-ng's pauses instead of writing <SIL>")
    p.add_argument("--phonemizer-voice", default="en-us", metavar="VOICE")
    p.add_argument("--trim-db", type=float, default=-40.0, metavar="DB",
                   help="cut leading/trailing audio quieter than this relative to the peak (0: no trimming)")
    p.add_argument("--seed", type=int, default=0)
    add_torch_threads_flag(p)
    p.set_defaults(func=handler(_TARGET + "cmd_prepare"))


def _add_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="the gate: a linear CTC phone probe on the frozen features",
                       description="Train a linear CTC phone classifier on the training utterances' frames (with "
                                   "their phone labels) and report its PER on the test utterances. If it cannot "
                                   "reach the gate, the layer does not carry phones and `train` refuses to run.")
    p.add_argument("work", metavar="WORK", help="folder made by `w2v wav2vec-u prepare`")
    p.add_argument("--updates", type=int, default=2000, metavar="N")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=16, metavar="N")
    p.add_argument("--time-budget", type=float, default=0.0, metavar="S", help="stop after S seconds (0: no limit)")
    p.add_argument("--gate", type=float, default=0.40, metavar="PER", help="largest PER that passes (default 0.40)")
    p.add_argument("--seed", type=int, default=0)
    add_torch_threads_flag(p)
    p.set_defaults(func=handler(_TARGET + "cmd_probe"))


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the wav2vec-U GAN (fairseq's w2vu.yaml defaults)",
                       description="Alternating generator/discriminator updates on the segments and the unpaired "
                                   "phonemized text. Checkpoints (atomic) every --eval-interval updates; a run "
                                   "resumes from OUT/checkpoint_last.pt. With several --seeds the checkpoint "
                                   "with the lowest unsupervised metric (LM perplexity / vocabulary usage^2) wins.")
    p.add_argument("work", metavar="WORK", help="folder made by `w2v wav2vec-u prepare`")
    p.add_argument("--out", required=True, metavar="DIR", help="model folder (checkpoints, phones.json, train.json)")
    p.add_argument("--updates", type=int, default=None, metavar="N", help="update budget (default 150000, fairseq's)")
    p.add_argument("--time-budget", type=float, default=0.0, metavar="S", help="stop after S seconds in all (0: no limit)")
    p.add_argument("--seeds", default="0", metavar="LIST", help="comma-separated seeds, one run each (fairseq: 0..4)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="default 160")
    p.add_argument("--disc-dim", type=int, default=None, metavar="N", help="discriminator channels (default 384)")
    p.add_argument("--code-penalty", type=float, default=None, metavar="W", help="default 4.0")
    p.add_argument("--gradient-penalty", type=float, default=None, metavar="W", help="default 1.5")
    p.add_argument("--smoothness-weight", type=float, default=None, metavar="W", help="default 0.5")
    p.add_argument("--lr-generator", type=float, default=None, metavar="LR", help="default 4e-4")
    p.add_argument("--lr-discriminator", type=float, default=None, metavar="LR", help="default 5e-4")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other GAN option (training.wav2vec_u.gan.GanConfig), e.g. generator_batch_norm=30")
    p.add_argument("--valid-utts", type=int, default=100, metavar="N",
                   help="training utterances held out for the unsupervised metric (at most a fifth)")
    p.add_argument("--lm-order", type=int, default=4, metavar="N", help="phone n-gram order of that metric's LM")
    p.add_argument("--no-monitor", action="store_true", help="do not log the test PER at evaluations")
    p.add_argument("--log-interval", type=int, default=100, metavar="N")
    p.add_argument("--eval-interval", type=int, default=500, metavar="N")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint_last.pt exists")
    p.add_argument("--ignore-gate", action="store_true", help="train even without a passing probe")
    add_torch_threads_flag(p)
    p.set_defaults(func=handler(_TARGET + "cmd_train"))


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="phone error rate of the GAN (greedy) next to the probe's",
                       description="Greedy decoding of the generator (argmax, repeats merged, <SIL> dropped) on a "
                                   "prepared split, scored against espeak-ng's phones.")
    p.add_argument("model", metavar="DIR", help="model folder written by `w2v wav2vec-u train`")
    p.add_argument("--work", required=True, metavar="WORK", help="the prepared folder the model was trained on")
    p.add_argument("--split", default="test", help="prepared split to score (default test)")
    p.add_argument("--checkpoint", default="best", metavar="best|last|FILE")
    add_torch_threads_flag(p)
    p.set_defaults(func=handler(_TARGET + "cmd_eval"))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("wav2vec-u", help="unsupervised speech recognition: wav2vec-U's GAN on pre-trained features",
                       description="wav2vec-U (Baevski et al. 2021) as fairseq's examples/wav2vec/unsupervised: "
                                   "prepare, probe (the gate), train, eval. docs/wav2vec_u.md has the pipeline.")
    wsub = p.add_subparsers(dest="wav2vec_u_command", required=True, metavar="SUBCOMMAND")
    for add in (_add_prepare, _add_probe, _add_train, _add_eval):
        add(wsub)
