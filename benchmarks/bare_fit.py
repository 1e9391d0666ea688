"""The digits fit as a bare script: prints ``FIRST_STEP <epoch seconds>`` when its first step ends.

It also prints ``READY <epoch seconds>`` once it has imported everything and built its Trainer
(where a job's rank zero writes its ``world`` event) and
``TRAIN_START <epoch seconds>`` when the fit's training starts, for a breakdown by phase.

B4 runs it with ``python`` and with ``torchrun --nproc_per_node=1`` and compares the time from
starting the command to that line with the time from ``tml.launch()`` to a job's first metric
event (also written at the end of the first step). The imports happen inside ``main`` on
purpose: they are part of the time to the first step, as they are for a job.

    python benchmarks/bare_fit.py [--steps 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

MARK = "FIRST_STEP"
READY = "READY"
TRAIN_START = "TRAIN_START"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fit the digits MLP without any monitoring.")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)

    import lightning.pytorch as pl

    from training_manager_lab.examples.digits import DigitsData, DigitsMLP

    class FirstStep(pl.Callback):
        def __init__(self) -> None:
            self.printed = False

        def on_train_start(self, trainer: pl.Trainer, *args: object) -> None:
            print(f"{TRAIN_START} {time.time()!r}", flush=True)

        def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
            if not self.printed:
                self.printed = True
                print(f"{MARK} {time.time()!r}", flush=True)

    trainer = pl.Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[FirstStep()],
        default_root_dir=str(Path.cwd()),
    )
    print(f"{READY} {time.time()!r}", flush=True)
    trainer.fit(DigitsMLP(), datamodule=DigitsData())
    return 0


if __name__ == "__main__":
    sys.exit(main())
