"""An MLP on scikit-learn's bundled handwritten digits (8x8 images, 10 classes)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class DigitsData(pl.LightningDataModule):
    """The digits data set, split 75/25 into train and validation, features scaled to [0, 1].

    Args:
        batch_size: samples per batch.
        seed: the split's random seed.
    """

    def __init__(self, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.seed = seed

    def setup(self, stage: str | None = None) -> None:
        features, labels = load_digits(return_X_y=True)
        x_train, x_val, y_train, y_val = train_test_split(
            features / 16.0, labels, test_size=0.25, random_state=self.seed, stratify=labels
        )
        self.train_set = _tensors(x_train, y_train)
        self.val_set = _tensors(x_val, y_val)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


class DigitsMLP(pl.LightningModule):
    """A two-layer perceptron that logs train_loss, val_loss and val_acc.

    Args:
        hidden: width of the hidden layer.
        lr: Adam's learning rate.
        fail_at_step: raise in training_step at this global step (on ``fail_rank``); for
            showing what a failing job looks like.
        fail_rank: the rank that fails.
        hang_at_step: at this global step, ``fail_rank`` sleeps for good instead (the other
            ranks then wait in their next collective); for showing stall detection.
    """

    def __init__(
        self,
        hidden: int = 64,
        lr: float = 1e-2,
        fail_at_step: int | None = None,
        fail_rank: int = 0,
        hang_at_step: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        hparams: Any = self.hparams
        fail_at = hparams.fail_at_step
        if (
            fail_at is not None
            and self.global_step >= fail_at
            and self.global_rank == hparams.fail_rank
        ):
            raise RuntimeError(f"deliberate failure at step {self.global_step}")
        hang_at = hparams.hang_at_step
        if (
            hang_at is not None
            and self.global_step >= hang_at
            and self.global_rank == hparams.fail_rank
        ):
            import time

            while True:
                time.sleep(1)
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y), sync_dist=True)
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=float(self.hparams["lr"]))


def held_out(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation split as tensors, for scoring a trained model."""
    data = DigitsData(seed=seed)
    data.setup()
    return data.val_set.tensors  # type: ignore[return-value]


def _tensors(features: Any, labels: Any) -> TensorDataset:
    return TensorDataset(
        torch.tensor(features, dtype=torch.float32), torch.tensor(labels, dtype=torch.long)
    )
