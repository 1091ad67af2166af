# How results/tune-rules-tiny-synth was produced (issue 24): jobs.tune on tiny-synth test splits never used for
# calibration (calibration used split calib seed 1), with and without reference answers, QA and ASR.
# 2 CPU cores shared with other jobs, OMP_NUM_THREADS=1, nice; wall times in the logs.
python -m jobs.synth --out /tmp/w24/data/synth-seed7 --split test --seed 7 --n 600 --long-fraction 0.2
python -m jobs.synth --out /tmp/w24/data/synth --split test --seed 2 --n 600 --long-fraction 0.2
# noanswer.jsonl: seed 7's manifest without the 'answer' key; digits.jsonl: the rows whose task is digits
python - <<'PY'
import json
for d, names in (("/tmp/w24/data/synth-seed7", ("noanswer", "digits")), ("/tmp/w24/data/synth", ("digits",))):
    rows = [json.loads(line) for line in open(f"{d}/test.jsonl")]
    if "noanswer" in names:
        open(f"{d}/noanswer.jsonl", "w").writelines(json.dumps({k: v for k, v in r.items() if k != "answer"}) + "\n" for r in rows)
    open(f"{d}/digits.jsonl", "w").writelines(json.dumps(r) + "\n" for r in rows if r["task"] == "digits")
PY
export OMP_NUM_THREADS=1
C="--model tiny-synth --max-new-tokens 16 --batch-size 8 --workers 1"
S7=/tmp/w24/data/synth-seed7
# QA with reference answers: the score kept decides (--target-on quality, the default with answers)
nice -n 10 python -m jobs.tune --input $S7/test.jsonl --output /tmp/w24/out/qa-seed7 --task qa --sample 300 --target 0.95 $C
# ASR on the digits clips (agreement = 1 - WER against the unpruned text), with reference answers
nice -n 10 python -m jobs.tune --input $S7/digits.jsonl --output /tmp/w24/out/asr-digits-seed7 --task asr --sample 100 --target 0.95 $C
# QA on the same 300 clips without answers: agreement decides, the output says how conservative it is
nice -n 10 python -m jobs.tune --input $S7/noanswer.jsonl --output /tmp/w24/out/qa-seed7-noref --task qa --sample 300 --target 0.95 $C
nice -n 10 python -m jobs.tune --input /tmp/w24/data/synth/digits.jsonl --output /tmp/w24/out/asr-digits-seed2 --task asr --sample 100 --target 0.95 $C
# Scored against the answers (per retain and family: agreement beside the score kept), and the holdout: each
# --target's recommendation under the run's rule checked on split seed 2 (results/shadow-tiny-synth/tune-seed2 ran
# every retain on all 600 of its clips)
python -m jobs.tune_check --manifest $S7/test.jsonl --tune /tmp/w24/out/qa-seed7 --holdout-manifest /tmp/w24/data/synth/test.jsonl \
    --holdout-tune results/shadow-tiny-synth/tune-seed2 --target 0.98 0.95 0.9 --out /tmp/w24/out/check-qa-seed7
python -m jobs.tune_check --manifest $S7/test.jsonl --tune /tmp/w24/out/qa-seed7-noref --holdout-manifest /tmp/w24/data/synth/test.jsonl \
    --holdout-tune results/shadow-tiny-synth/tune-seed2 --target 0.98 0.95 0.9 --out /tmp/w24/out/check-qa-seed7-noref
python -m jobs.tune_check --manifest $S7/digits.jsonl --tune /tmp/w24/out/qa-seed7 --out /tmp/w24/out/check-qa-seed7-digits
python -m jobs.tune_check --manifest $S7/digits.jsonl --tune /tmp/w24/out/asr-digits-seed7 --out /tmp/w24/out/check-asr-digits-seed7
# then: cp -r /tmp/w24/out/{qa-seed7,asr-digits-seed7,...} /tmp/w24/out/*.log results/tune-rules-tiny-synth/
# Code: run from a copy of commit 6b5468a with this issue's scoring and recommendation files (commit 229ecb8's
# versions of pipeline/tune.py's rule code, jobs/tune.py, quality/metrics.py, quality/tune_check.py,
# pipeline/sources.py), before RunOptions carried a PruneOptions: recommendation.json has no "budget" field here.
python -m jobs.tune_check --manifest /tmp/w24/data/synth/digits.jsonl --tune /tmp/w24/out/asr-digits-seed2 --out /tmp/w24/out/check-asr-digits-seed2
