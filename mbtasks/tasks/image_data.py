"""What the image-level data modules (attributes, embeddings, classification) share: input size, augmentation
presets, and samples keyed by their index."""

import copy
from collections.abc import Callable
from operator import itemgetter
from typing import ClassVar

import numpy as np
from torch.utils.data import Dataset

from ..config import Config
from ..datasets.image_transforms import displayable, eval_transform, train_transform
from ..errors import MbtasksError
from ..sizes import height_width
from .base import BaseDataModule

# data.augmentation -> training crop and colour settings, and the evaluation crop (None: the whole image, resized)
AUGMENTATIONS = {
    "imagenet": dict(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=True, color_jitter=0.4, crop_fraction=0.875),
    # Faces keep (nearly) the whole face and their colours: hair colour, pale skin and lipstick are attributes.
    "face": dict(scale=(0.8, 1.0), ratio=(0.9, 1.1), hflip=True, color_jitter=0.0, crop_fraction=None),
    "light": dict(scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), hflip=True, color_jitter=0.2, crop_fraction=None),
    "none": dict(crop_fraction=None),  # training images go through the evaluation transform
}


class Indexed(Dataset):
    """(index, *item): the key that counts a validation sample once under DDP, and a training image's teacher row."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        return (index, *self.dataset[index])


class ImageDataModule(BaseDataModule):
    """An image-level data module: square or HxW inputs resized from whole images, a preset of augmentations."""

    default_size: ClassVar[int]  # input size when data.size is not set
    default_augmentation: ClassVar[str]  # the preset data.augmentation "default" means
    graph_input = itemgetter(1)  # items (index, image, ...)

    def __init__(self, config: Config | dict):
        super().__init__(config)
        data = self.config.data
        size = self.input_size(self.config)
        self.size = height_width(size)
        preset = self.default_augmentation if data.augmentation == "default" else data.augmentation
        if preset not in AUGMENTATIONS:
            raise MbtasksError(
                f"data.augmentation must be default or one of {', '.join(AUGMENTATIONS)}, got {data.augmentation!r}"
            )
        self.augmentation = AUGMENTATIONS[preset]

    @classmethod
    def input_size(cls, config: Config) -> int | list:
        return config.data.size or cls.default_size

    def sample_for_drawing(self, item: tuple, zoom: int = 1) -> tuple[np.ndarray, object]:
        """The normalised image and its target (items (index, image, target); None where there is none)."""
        return displayable(item[1], normalised=True, zoom=zoom), item[2] if len(item) > 2 else None

    def unaugmented_train_set(self) -> Dataset:
        images = copy.copy(self.train_set.dataset)  # the set under Indexed
        images.transform = self.transform(False)
        return Indexed(images)

    @classmethod
    def predict_transform(cls, config: Config) -> Callable:
        return cls(config).transform(False)  # the constructor reads no data: only sizes and presets

    def transform(self, train: bool) -> Callable:
        settings = dict(self.augmentation)
        crop_fraction = settings.pop("crop_fraction")
        if not train or not settings:
            return eval_transform(self.size, crop_fraction)
        return train_transform(self.size, seed=self.config.train.seed, **settings)
