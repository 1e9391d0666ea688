"""Benchmark models: a heavier perceptron on synthetic images, and digits in one long epoch."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from training_manager_lab.examples.digits import DigitsData


class SyntheticImages(pl.LightningDataModule):
    """Random 3x32x32 images labelled by a fixed random linear teacher (so the loss falls).

    Args:
        samples: images in the training set.
        batch_size: images per batch.
        seed: the generator's seed.
    """

    def __init__(self, samples: int = 2048, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.samples = samples
        self.batch_size = batch_size
        self.seed = seed

    def setup(self, stage: str | None = None) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        images = torch.randn(self.samples, 3, 32, 32, generator=generator)
        teacher = torch.randn(3 * 32 * 32, 10, generator=generator)
        labels = (images.flatten(1) @ teacher).argmax(dim=1)
        self.train_set = TensorDataset(images, labels)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)


class WideMLP(pl.LightningModule):
    """A perceptron on flattened 3x32x32 images with two wide hidden layers.

    Logs ``train_loss`` and ``train_acc`` on every step. With the default width a step takes
    about 20 ms on one CPU thread, ten times a digits step, so that the same per-step logging
    cost weighs less.

    Args:
        hidden: width of the hidden layers; sets the cost of a step.
        lr: SGD's learning rate.
    """

    def __init__(self, hidden: int = 640, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(3 * 32 * 32, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log("train_loss", loss)
        self.log("train_acc", (logits.argmax(dim=1) == y).float().mean())
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class LongDigitsData(DigitsData):
    """The digits data drawn with replacement into one epoch of exactly ``steps`` batches.

    One long epoch keeps epoch boundaries (and their fixed costs) out of a growth measurement.

    Args:
        steps: batches in the epoch.
        batch_size: samples per batch.
    """

    def __init__(self, steps: int, batch_size: int = 64) -> None:
        super().__init__(batch_size=batch_size)
        self.steps = steps

    def train_dataloader(self) -> DataLoader:
        sampler = RandomSampler(
            self.train_set, replacement=True, num_samples=self.steps * self.batch_size
        )
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler)
