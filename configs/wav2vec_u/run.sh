#!/usr/bin/env bash
# wav2vec-U end to end on a pre-trained checkpoint and a synthetic corpus, sized for about
# 20 minutes on 2 CPU cores: prepare (text, features, k-means, PCA, segments), the linear-probe
# gate, the GAN, evaluation. docs/wav2vec_u.md explains each step.
#
#   CKPT=runs/pretrain_small/checkpoint_best.pt CORPUS=data/corpus configs/wav2vec_u/run.sh
#
# Required: CKPT (a pre-trained w2v checkpoint), CORPUS (a folder made by `w2v data synth`: train.tsv,
# test.tsv, their .wrd and .renderings.jsonl). Everything else has a default (override by env):
#   OUT=runs/wav2vec_u          work folder OUT/work, GAN model folder OUT/gan, logs OUT/*.log
#   LAYER=                      0-based Transformer block (default: the middle one)
#   CLUSTERS=64 PCA_DIM=128     k-means clusters (fairseq: 128), PCA dimensions (fairseq: 512)
#   VOICES=en-us                espeak-ng voice prefixes of the audio used ("all": every voice)
#   MAX_TRAIN_UTTS=1000 MAX_TEST_UTTS=200 MAX_TEXT=10000
#   PROBE_BUDGET=120            seconds for the linear probe (the gate; PER <= GATE passes)
#   GATE=0.40 IGNORE_GATE=0     IGNORE_GATE=1 trains the GAN even when the probe fails
#   GAN_BUDGET=540 SEEDS=0,1,2  seconds for the GAN in all, split over the seeds (fairseq: 5 seeds)
#   DISC_DIM=128 BATCH=160      discriminator width (fairseq: 384, ~5x slower on CPU), batch size
#   GAN_ARGS=                   more `w2v wav2vec-u train` flags, e.g. "--set join_segments=false"
#   THREADS=1                   torch threads (1 is safest when anything else runs on the machine)
set -euo pipefail

: "${CKPT:?set CKPT to a pre-trained w2v checkpoint}"
: "${CORPUS:?set CORPUS to a folder made by w2v data synth}"
OUT=${OUT:-runs/wav2vec_u}
LAYER=${LAYER:-}
CLUSTERS=${CLUSTERS:-64}
PCA_DIM=${PCA_DIM:-128}
VOICES=${VOICES:-en-us}
MAX_TRAIN_UTTS=${MAX_TRAIN_UTTS:-1000}
MAX_TEST_UTTS=${MAX_TEST_UTTS:-200}
MAX_TEXT=${MAX_TEXT:-10000}
PROBE_BUDGET=${PROBE_BUDGET:-120}
GATE=${GATE:-0.40}
IGNORE_GATE=${IGNORE_GATE:-0}
GAN_BUDGET=${GAN_BUDGET:-540}
SEEDS=${SEEDS:-0,1,2}
DISC_DIM=${DISC_DIM:-128}
BATCH=${BATCH:-160}
GAN_ARGS=${GAN_ARGS:-}
THREADS=${THREADS:-1}
W2V=${W2V:-w2v}

WORK=$OUT/work
MODEL=$OUT/gan
mkdir -p "$OUT"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }

stamp "prepare -> $WORK"
$W2V wav2vec-u prepare --checkpoint "$CKPT" --corpus "$CORPUS" --out "$WORK" \
    ${LAYER:+--layer "$LAYER"} --clusters "$CLUSTERS" --pca-dim "$PCA_DIM" --voices "$VOICES" \
    --max-train-utts "$MAX_TRAIN_UTTS" --max-test-utts "$MAX_TEST_UTTS" --max-text-sentences "$MAX_TEXT" \
    --threads "$THREADS" 2> "$OUT/prepare.log"

stamp "probe (the gate)"
$W2V wav2vec-u probe "$WORK" --updates 100000 --time-budget "$PROBE_BUDGET" --gate "$GATE" \
    --threads "$THREADS" 2> "$OUT/probe.log"

gate_flag=()
if [ "$IGNORE_GATE" = 1 ]; then gate_flag=(--ignore-gate); fi
stamp "GAN -> $MODEL"
set +e
# shellcheck disable=SC2086
$W2V wav2vec-u train "$WORK" --out "$MODEL" --updates 150000 --time-budget "$GAN_BUDGET" --seeds "$SEEDS" \
    --disc-dim "$DISC_DIM" --batch-size "$BATCH" --threads "$THREADS" "${gate_flag[@]}" $GAN_ARGS \
    2> "$OUT/train.log"
rc=$?
set -e
if [ $rc -ne 0 ]; then
    tail -n 3 "$OUT/train.log"
    stamp "no GAN: the gate failed (see $WORK/probe.json); IGNORE_GATE=1 trains it anyway"
    exit $rc
fi

stamp "eval"
$W2V wav2vec-u eval "$MODEL" --work "$WORK" --threads "$THREADS" 2> "$OUT/eval.log"
stamp "done: $WORK/prepare.json, $WORK/probe.json, $MODEL/train.json, $MODEL/eval_test.json"
