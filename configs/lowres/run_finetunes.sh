#!/usr/bin/env bash
# The low-resource comparison after pre-training (docs/low_resource.md): same recipe, same updates,
# pre-trained vs scratch, per labeled subset; greedy CER/WER on test and test_heldout_engine go to
# runs/lowres/results.jsonl. UPD=600 LABELS=1h configs/lowres/run_finetunes.sh
set -u
cd "$(dirname "$0")/../.."
W2V=.venv/bin/w2v
UPD=${UPD:-800}
for labels in ${LABELS:-1h 10min}; do
  for init in pt scratch; do
    dir=runs/lowres/ft_${labels}_${init}
    extra=()
    if [ "$init" = scratch ]; then extra=(task.init= task.freeze_updates=0 task.freeze_feature_encoder=false); fi
    start=$(date +%s)
    $W2V finetune configs/lowres/finetune.yaml data.train=data/synth2/subsets/train_${labels}.tsv \
      run.save_dir=$dir run.max_updates=$UPD run.eval_interval=100000 run.progress=false "${extra[@]}" > $dir.log 2>&1
    end=$(date +%s)
    $W2V export $dir/checkpoint_last.pt --out $dir/export --no-check > /dev/null 2>&1
    for split in test test_heldout_engine; do
      r=$($W2V eval data/synth2/$split.tsv --model $dir/export --decoder greedy --runtime onnxruntime --precision fp32 --json)
      echo "{\"labels\": \"$labels\", \"init\": \"$init\", \"split\": \"$split\", \"updates\": $UPD, \"train_s\": $((end-start)), \"eval\": $r}" >> runs/lowres/results.jsonl
    done
  done
done
echo done >> runs/lowres/results.jsonl
