#!/usr/bin/env bash
# The low-resource comparison after pre-training (docs/low_resource.md): same recipe, same updates,
# pre-trained vs scratch, per labeled subset; CER/WER greedy and beam 64 + a 3-gram LM of the
# training sentences on test and test_heldout_engine go to runs/lowres/results.jsonl.
#   UPD=2000 LABELS="1h 10min" INITS="pt ptu scratch" configs/lowres/run_finetunes.sh
# PT=CKPT: the pre-trained checkpoint (default the recipe's runs/lowres/pretrain/checkpoint_last.pt);
# TAG=_x: suffix of the run directories, to keep runs with other budgets apart.
# EXTRA="key=value ...": more overrides for every run (e.g. EXTRA=task.fresh_top_layers=1 TAG=_fresh1).
# Each run uses one thread (configs/lowres/finetune.yaml): start two at once on two cores.
set -u
cd "$(dirname "$0")/../.."
W2V=.venv/bin/w2v
UPD=${UPD:-2000}
PT=${PT:-runs/lowres/pretrain/checkpoint_last.pt}
TAG=${TAG:-}
LM=runs/lowres/lm/train3.arpa
if [ ! -f $LM ]; then
  mkdir -p runs/lowres/lm
  # Training sentences only (test/dev sentences are disjoint), plus Debian's word list as unigrams.
  $W2V lm build data/synth2/train.wrd --order 3 --case lower --lexicon /usr/share/dict/american-english --out $LM > /dev/null
fi
for labels in ${LABELS:-1h 10min}; do
  for init in ${INITS:-pt scratch}; do
    dir=runs/lowres/ft_${labels}_${init}${TAG}
    extra=(task.init=$PT)
    pt_updates=$(.venv/bin/python -c "import torch,sys; print(torch.load(sys.argv[1], map_location='cpu', weights_only=False)['training']['update'])" $PT 2>/dev/null || echo null)
    # pt: the pre-trained conv encoder frozen (the paper's fine-tuning); ptu: trained too, as scratch.
    if [ "$init" = scratch ]; then extra=(task.init= task.freeze_updates=0 task.freeze_feature_encoder=false); pt_updates=0; fi
    if [ "$init" = ptu ]; then extra+=(task.freeze_feature_encoder=false); fi
    start=$(date +%s)
    $W2V finetune configs/lowres/finetune.yaml data.train=data/synth2/subsets/train_${labels}.tsv \
      run.save_dir=$dir run.max_updates=$UPD run.eval_interval=100000 run.progress=false "${extra[@]}" ${EXTRA:-} > $dir.log 2>&1
    end=$(date +%s)
    $W2V export $dir/checkpoint_last.pt --out $dir/export --no-check > /dev/null 2>&1
    for split in test test_heldout_engine; do
      g=$($W2V eval data/synth2/$split.tsv --model $dir/export --decoder greedy --runtime onnxruntime --precision fp32 --json)
      b=$($W2V eval data/synth2/$split.tsv --model $dir/export --decoder beam --lm $LM --runtime onnxruntime --precision fp32 --json)
      echo "{\"labels\": \"$labels\", \"init\": \"$init\", \"split\": \"$split\", \"updates\": $UPD, \"pretrain_updates\": $pt_updates, \"extra\": \"${EXTRA:-}\", \"train_s\": $((end-start)), \"greedy\": $g, \"beam_lm\": $b}" >> runs/lowres/results.jsonl
    done
  done
done
