# How results/shadow-tiny-synth was produced (2 CPU cores shared, OMP_NUM_THREADS=1, nice; 15 min + 10 min).
# Splits: /work/data/synth/test.jsonl (seed 2, docs/quality.md) and /work/data/synth-seed7/test.jsonl (seed 7).
OMP_NUM_THREADS=1 nice -n 10 python -m jobs.tune --input /work/data/synth/test.jsonl --output /tmp/w/val/tune-seed2 \
    --model tiny-synth --task qa --sample 600 --target 0.98 --max-new-tokens 16 --batch-size 8 --workers 1
OMP_NUM_THREADS=1 nice -n 10 python -m jobs.tune --input /work/data/synth-seed7/test.jsonl --output /tmp/w/val/tune-seed7 \
    --model tiny-synth --task qa --sample 600 --retain 0.9 0.7 --target 0.98 --max-new-tokens 16 --batch-size 8 --workers 1
cp /tmp/w/val/tune-seed2/* results/shadow-tiny-synth/tune-seed2/ && cp /tmp/w/val/tune-seed7/* results/shadow-tiny-synth/tune-seed7/
python -m jobs.tune_check --manifest /work/data/synth/test.jsonl --tune results/shadow-tiny-synth/tune-seed2 \
    --holdout-manifest /work/data/synth-seed7/test.jsonl --holdout-tune results/shadow-tiny-synth/tune-seed7 \
    --target 0.98 0.95 0.9 --out results/shadow-tiny-synth
