"""A data set whose items are another's passed through a function."""

from collections.abc import Callable

from torch.utils.data import Dataset


class Mapped(Dataset):
    """`function(dataset[i])` for each item; an `operator.itemgetter` keeps it picklable for loader workers."""

    def __init__(self, dataset: Dataset, function: Callable):
        self.dataset, self.function = dataset, function

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.function(self.dataset[index])
