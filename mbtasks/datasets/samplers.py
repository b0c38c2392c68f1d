"""One seeded order of the training set per epoch, shared out over processes, and augmentations seeded per sample:
the images a step sees, and how they are augmented, depend on (seed, epoch, index) alone, so N processes x batch b
see what one process x batch N*b sees, in any loader worker, and a resumed run sees what the uninterrupted one did."""

from collections.abc import Callable, Iterator

from torch.utils.data import Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """torch's DistributedSampler (the epoch's permutation from seed + epoch, this process's share), yielding
    (epoch, index) keys for SeededAugmentation. The epoch is read from `epoch_of()` when an epoch's iteration starts:
    Lightning builds a resumed run's first iterator before it calls set_epoch."""

    def __init__(self, dataset: Dataset, epoch_of: Callable[[], int], **options):
        super().__init__(dataset, **options)
        self.epoch_of = epoch_of

    def __iter__(self) -> Iterator[tuple[int, int]]:
        self.set_epoch(self.epoch_of())
        return ((self.epoch, index) for index in super().__iter__())


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
