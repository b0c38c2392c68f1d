"""One seeded order of the training set per epoch, shared out over processes, and augmentations seeded per sample:
the images a step sees, and how they are augmented, depend on (seed, epoch, index) alone, so N processes x batch b
see what one process x batch N*b sees, in any loader worker, and a resumed run sees what the uninterrupted one did."""

from collections.abc import Callable, Iterator

from torch.utils.data import DataLoader, Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """torch's DistributedSampler (the epoch's permutation from seed + epoch, this process's share), yielding
    (epoch, index) keys for SeededAugmentation. The epoch is read from `epoch_of()` when an epoch's iteration starts:
    Lightning builds a resumed run's first iterator before it calls set_epoch."""

    def __init__(self, dataset: Dataset, epoch_of: Callable[[], int], **options):
        super().__init__(dataset, **options)
        self.epoch_of = epoch_of
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, taken: int) -> None:
        """The next iteration, if it is of `epoch`, leaves out the first `taken` samples of this process's share."""
        self._resume = (epoch, taken)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        self.set_epoch(self.epoch_of())
        indices = list(super().__iter__())
        if self._resume is not None:
            epoch, taken = self._resume
            self._resume = None
            indices = indices[taken:] if epoch == self.epoch else indices
        return ((self.epoch, index) for index in indices)


class ResumableLoader(DataLoader):
    """A training loader over an EpochSampler with the `state_dict` / `load_state_dict` by which Lightning resumes a
    loader mid-epoch: how many batches of its epoch training had taken (`batches_taken()`), which the resumed epoch
    leaves out, so a run stopped mid-epoch goes on with the next batch. (The data module that builds it restores the
    same state itself, in time for the first iteration; the resumed epoch skips once, whoever restores it.)"""

    def __init__(self, *args, batches_taken: Callable[[], int], **options):
        super().__init__(*args, **options)
        self.batches_taken = batches_taken

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch_of(), "batches": self.batches_taken()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.resume_at(int(state["epoch"]), int(state["batches"]) * self.batch_size)


class SeededAugmentation(Dataset):
    """Items of `dataset` by (epoch, index) key, with the random augmentation `transform` (the pipeline the data set
    applies: albumentations', or one with its `set_random_seed`) reseeded from (seed, epoch, index) before each."""

    def __init__(self, dataset: Dataset, transform, seed: int):
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int] | int):
        # A plain index comes from a sampler Lightning put in EpochSampler's place (overfit_batches' sequential one):
        # epoch 0's augmentation every epoch, the fixed batches overfitting asks for.
        epoch, index = key if isinstance(key, tuple) else (0, key)
        # A tuple of ints hashes the same in every process (only str and bytes hashes are salted).
        self.transform.set_random_seed(hash((self.seed, epoch, index)) % 2**32)
        return self.dataset[index]
