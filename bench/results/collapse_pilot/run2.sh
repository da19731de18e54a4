#!/bin/bash
# Pilot of the collapse study (issue 17): first order, whole digits split, lower alpha lr,
# up to ~5,000 alpha steps. Sequential; re-running this script resumes unfinished runs.
cd /work/wt/i17
export PYTHONPATH=/work/wt/i17 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
run() {  # name space arch_lr
  out=/work/runs/pilot/$1
  extra=""
  if [ -f $out/summary.json ] && grep -q '"stop_reason": "\(converged\|epochs\)"' $out/summary.json; then return; fi
  if [ -f $out/checkpoint.pt ]; then extra="--resume"; elif [ -d $out ]; then extra="--force"; fi
  layers=5; [ $2 = nb201 ] && layers=1
  python -m darts_amend.cli search --dataset digits --subset 1 --space $2 --layers $layers \
    --init_channels 4 --batch_size 32 --epochs 218 --steps_per_epoch 0 --learning_rate 0.05 \
    --learning_rate_min 0.05 --arch_learning_rate $3 --arch_weight_decay 0.001 \
    --until-converged 10 --converge_threshold 0.5 --diag_every 10 --seed 0 --threads 1 \
    --no-progress --no-plots -q --output $out --estimator first_order $extra
}
while kill -0 7827 2>/dev/null; do sleep 10; done  # the first pilot run, started by run.sh
run nb201-lr3e-2 nb201 0.03
run nb201-lr1e-2 nb201 0.01
run s3r-lr1e-2 s3r 0.01
