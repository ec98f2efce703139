"""Datasets held in memory as uint8 tensors, augmented in batches on the training device."""

from .augment import Augment
from .catalog import DATASETS, check_dataset_name, dataset_names, load_dataset, same_images
from .dataset import ImageDataset
from .loader import eval_batches, steps_per_epoch, train_batches

__all__ = ["Augment", "DATASETS", "ImageDataset", "check_dataset_name", "dataset_names", "eval_batches",
           "load_dataset", "same_images", "steps_per_epoch", "train_batches"]
