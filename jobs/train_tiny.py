"""Train `tiny-synth`: a small Qwen2.5-Omni thinker, from scratch, on the synthetic tasks (CPU, SDPA).

    python -m jobs.synth --out /work/data/synth --split train --seed 0 --n 8000 --long-fraction 0.06
    python -m jobs.synth --out /work/data/synth --split test --seed 2 --n 600 --long-fraction 0.25
    python -m jobs.train_tiny --data /work/data/synth --out models/tiny-synth --minutes 50 --seed 0

Reads DIR/train.jsonl (and DIR/test.jsonl for the held-out evaluation when present), caches mel features as
fp16 .npy under DIR/mel/, trains with AdamW and a warm-up + cosine schedule over the time budget (or over
`--steps` when given, which makes the run's schedule independent of machine speed), and writes the model folder
load_lalm reads (config.json, model.safetensors, tokenizer, preprocessor_config.json) plus training_info.json.
Loss is cross-entropy on the answer tokens and `<|im_end|>` only.
"""

from __future__ import annotations

import argparse
import logging

from quality.train import TrainOptions, train


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, field in TrainOptions.__dataclass_fields__.items():
        flag = "--" + name.replace("_", "-")
        if name in ("data", "out"):
            p.add_argument(flag, required=True)
        elif name in ("steps", "init_from"):
            p.add_argument(flag, type=int if name == "steps" else str, default=None)
        else:
            p.add_argument(flag, type=type(field.default), default=field.default)
    opts = TrainOptions(**vars(p.parse_args(argv)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    train(opts)


if __name__ == "__main__":
    main()
