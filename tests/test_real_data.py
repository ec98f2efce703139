"""Full Fashion-MNIST from the data root in SELFDISTILL_DATA: verified, loaded, and learned from."""

import torch

from selfdistill.config import DataConfig
from selfdistill.data import load_dataset
from selfdistill.engine import resolve, train


def test_full_fashion_mnist_loads_verified(fashion_root):
    data = load_dataset(DataConfig(dataset="fashion-mnist", data_dir=str(fashion_root), download=False))
    assert data.train_images.shape == (60000, 1, 28, 28) and data.test_images.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.train_labels).tolist() == [6000] * 10
    assert (fashion_root / "SHA256SUMS").is_file()  # what load_dataset checked the files against


def test_ce_and_dlb_learn_real_images(fashion_root):
    results = {}
    for method in ("ce", "dlb"):
        config = resolve([{"method": {"name": method}, "model": {"name": "cnn"},
                           "data": {"dataset": "fashion-mnist", "data_dir": str(fashion_root), "train_subset": 6000},
                           "schedule": {"name": "cosine"}, "train": {"epochs": 2, "progress": False}}])
        results[method] = train(config)
    for method, metrics in results.items():
        assert metrics["test_images"] == 10000  # evaluated on the full test set
        assert metrics["test_top1"] > 70, method
    assert results["dlb"]["train_images_seen"] > 1.9 * results["ce"]["train_images_seen"]
