"""The order of the training data and the randomness of each sample, as pure functions.

The data order is a function of (seed, epoch) (``EpochSampler``, a ``DistributedSampler``
seeded per epoch) and each sample's augmentation a function of (seed, epoch, index)
(``SeededDataset``), whatever the worker. A checkpoint therefore only needs the position in
the epoch: a resumed run skips the consumed samples without replaying the loader, and on
CPU reproduces an uninterrupted run's losses exactly.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that depends only on (seed, epoch, index)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def reseed_transforms(tf, seed: int) -> None:
    """Reseeds every albumentations pipeline inside ``tf`` (fcnseg.data.transforms' Compose
    of Albu ops) from ``seed``; each op gets its own stream."""
    stack, k = [tf], 0
    while stack:
        obj = stack.pop()
        compose = getattr(obj, "compose", None)
        if compose is not None and hasattr(compose, "set_random_seed"):
            compose.set_random_seed((seed + 7919 * k) % 2**32)
            if hasattr(obj, "_pid"):  # tell Albu not to reseed itself on first use here
                obj._pid = os.getpid()
            k += 1
        elif hasattr(obj, "set_random_seed"):
            obj.set_random_seed((seed + 7919 * k) % 2**32)
            k += 1
        sub = getattr(obj, "transforms", None)
        if isinstance(sub, list | tuple):
            stack.extend(reversed(sub))


class SeededDataset(Dataset):
    """Wraps a dataset so item ``(epoch, i)`` is ``dataset[i]`` with every random number
    the transforms draw seeded from (seed, epoch, i): the same sample on any worker, in any
    order, after any resume. The global RNGs are restored afterwards."""

    def __init__(self, dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        s = sample_seed(self.seed, epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                random.seed(s)
                np.random.seed(s)
                torch.manual_seed(s)
                reseed_transforms(getattr(self.dataset, "transforms", None), s)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class EpochSampler(DistributedSampler):
    """A ``DistributedSampler`` (shuffled per epoch by ``set_epoch``, sharded over ranks)
    that yields ``(epoch, index)`` keys for ``SeededDataset`` and can start ``start``
    samples into this rank's share of the epoch (resuming mid-epoch)."""

    def __init__(self, dataset, *, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.start :]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


def rng_state() -> dict:
    """The global random states (Python, NumPy, torch and CUDA), for a checkpoint."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
