"""Class names, for per-class results (``selfdistill eval``) and the model card: fixed lists for Fashion-MNIST
and CIFAR-10; an image tree's come from its class folders (``tree.class_names``: Tiny-ImageNet's WordNet ids
named by its ``words.txt``); None for a dataset whose classes have only their numbers (MNIST's digits,
CIFAR-100, synthetic data)."""

from __future__ import annotations

# the datasets' own label order (Fashion-MNIST's README; CIFAR-10's batches.meta)
FASHION_MNIST = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot")
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
