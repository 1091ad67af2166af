# Choosing the rule's power p on the calibration split (seed 1), as run (outputs were under /tmp, copied here).
# Code: commit 8ef4ccb + the eval/budget changes of 3d80cee (same rule as shipped); 1 torch thread, shared CPU.
for g in 1 2 4; do
  python -m jobs.calibrate_budget --model tiny-synth --manifest /work/data/budget/calib600/calib.jsonl \
      --methods headrouter --power $g --out /tmp/budget-sel/profiles-p$g.json
done
for g in 1 2 4; do   # no --match-kept: adaptive kept 41.3% (p=1), 43.3% (p=2), 41.9% (p=4) vs fixed 39.8%
  python -m jobs.eval --model tiny-synth --manifest /work/data/budget/calib600/calib.jsonl \
      --out results/tiny-synth-budget/power-selection/calib-p$g --profiles /tmp/budget-sel/profiles-p$g.json \
      --methods vanilla headrouter --retain 0.4 --budget $( [ $g = 1 ] && echo fixed ) adaptive \
      --per-task 40 --seed 0 --resamples 1000
done
