"""Label noise, subsets, batched augmentation, batching and image folders."""

import pytest
import torch

from selfdistill.config import DataConfig
from selfdistill.data import Augment, load_dataset, steps_per_epoch, train_batches
from selfdistill.data.augment import pad_images, random_crop, random_flip, random_resized_crop
from selfdistill.data.image_folder import read_image_folder
from selfdistill.data.labels import balanced_subset, symmetric_noise
from selfdistill.data.loader import eval_batches
from selfdistill.errors import UserError


def test_symmetric_noise_changes_exactly_the_rate_to_other_classes():
    labels = torch.arange(1000) % 10
    noisy = symmetric_noise(labels, 0.4, 10, torch.Generator().manual_seed(1))
    changed = noisy != labels
    assert changed.sum().item() == 400  # every chosen label moved to a different class
    counts = torch.bincount(noisy[changed], minlength=10)
    assert counts.min() > 20  # spread over all classes
    again = symmetric_noise(labels, 0.4, 10, torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again)


def test_noise_is_fixed_by_the_seed_and_keeps_clean_labels():
    cfg = DataConfig(dataset="fashion-mnist-mini", label_noise=0.4)
    a, b, c = load_dataset(cfg, seed=0), load_dataset(cfg, seed=0), load_dataset(cfg, seed=1)
    assert torch.equal(a.train_labels, b.train_labels) and not torch.equal(a.train_labels, c.train_labels)
    assert (a.train_labels != a.clean_train_labels).float().mean().item() == pytest.approx(0.4)
    assert torch.equal(a.test_labels, load_dataset("fashion-mnist-mini").test_labels)  # test labels stay clean


def test_balanced_subset_takes_equal_counts_per_class():
    labels = torch.arange(100) % 4
    keep = balanced_subset(labels, 10, 4, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[keep]).tolist() == [3, 3, 2, 2]
    assert len(set(keep.tolist())) == 10 and keep.tolist() == sorted(keep.tolist())
    with pytest.raises(UserError, match="train_subset"):
        balanced_subset(labels, 200, 4, torch.Generator())
    data = load_dataset(DataConfig(dataset="fashion-mnist-mini", train_subset=500))
    assert torch.bincount(data.train_labels).tolist() == [50] * 10


def test_random_crop_takes_shifted_windows_of_the_padded_image():
    images = torch.arange(2 * 5 * 5, dtype=torch.uint8).view(2, 1, 5, 5) + 1
    out = random_crop(images, 2, torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, dy:dy + 5, dx:dx + 5] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert out.shape == images.shape and out.dtype == torch.uint8


def test_random_crop_varies_across_images_and_is_reproducible():
    images = torch.randint(1, 255, (64, 1, 8, 8), dtype=torch.uint8)
    a = random_crop(images, 2, torch.Generator().manual_seed(0))
    b = random_crop(images, 2, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    unchanged = sum(torch.equal(a[i], images[i]) for i in range(64))
    assert unchanged < 16  # about 1 in 25 crops is the identity


def test_random_flip_flips_about_half_exactly():
    images = torch.randint(0, 255, (200, 1, 4, 4), dtype=torch.uint8)
    out = random_flip(images, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(out[i], images[i].flip(-1)) and not torch.equal(out[i], images[i])
                            for i in range(200)])
    kept = torch.tensor([torch.equal(out[i], images[i]) for i in range(200)])
    assert (flipped | kept).all() and 60 < flipped.sum() < 140


def test_normalisation_and_padding():
    aug = Augment((0.5,), (0.25,), pad_to=6)
    images = torch.full((1, 1, 4, 4), 255, dtype=torch.uint8)
    out = aug.eval(images)
    assert out.shape == (1, 1, 6, 6)
    assert out[0, 0, 1:5, 1:5].allclose(torch.tensor(2.0))  # (1 - 0.5) / 0.25
    assert out[0, 0, 0, 0].item() == pytest.approx(-2.0)  # zero padding normalised
    assert pad_images(images, 4) is images


def test_random_resized_crop_keeps_shape_and_value_range():
    images = torch.rand(16, 3, 32, 32)
    out = random_resized_crop(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    assert out.min() >= images.min() - 1e-6 and out.max() <= images.max() + 1e-6
    assert not torch.allclose(out, images)


def test_train_batches_cover_every_index_once_and_shard_disjointly():
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    batches = train_batches(103, 10, gen())
    seen = torch.cat(batches)
    assert sorted(seen.tolist()) == list(range(103)) and len(batches) == steps_per_epoch(103, 10)
    shards = [torch.cat(train_batches(103, 4, gen(), rank=r, world_size=2)) for r in range(2)]
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    assert len(shards[0]) == len(shards[1]) == 51  # 103 cut to 102, half each
    assert len(train_batches(103, 4, gen(), rank=0, world_size=2)) == steps_per_epoch(103, 4, world_size=2) == 13


def test_a_single_sample_final_batch_is_dropped_and_drop_last_drops_partials():
    assert [len(b) for b in train_batches(21, 10, torch.Generator())] == [10, 10]
    assert [len(b) for b in train_batches(25, 10, torch.Generator(), drop_last=True)] == [10, 10]
    assert steps_per_epoch(21, 10) == 2 and steps_per_epoch(25, 10, drop_last=True) == 2


def test_eval_batches_are_unshuffled_and_complete_across_ranks():
    parts = [torch.cat(list(eval_batches(10, 3, rank=r, world_size=3))) for r in range(3)]
    assert torch.cat(parts).tolist() == list(range(10))


def test_image_folder_generic_and_tiny_imagenet_layouts(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SELFDISTILL_NO_CACHE")  # conftest turns the decode cache off; this test reads it
    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for split in ("train", "val"):
        for name, colour in colours.items():
            (tmp_path / "generic" / split / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (16, 16), colour).save(tmp_path / "generic" / split / name / f"{i}.png")
    train_x, train_y, val_x, val_y, classes = read_image_folder(tmp_path / "generic", 8)
    assert classes == 2 and train_x.shape == (6, 3, 8, 8) and val_x.shape == (6, 3, 8, 8)
    assert train_x[train_y == 0][:, 0].float().mean() == 255  # "cat" (class 0) is red
    cached = list((tmp_path / "cache").rglob("*.pt"))
    assert len(cached) == 1

    tiny = tmp_path / "tiny"
    for name, colour in colours.items():
        (tiny / "train" / name / "images").mkdir(parents=True)
        Image.new("RGB", (64, 64), colour).save(tiny / "train" / name / "images" / f"{name}_0.JPEG")
    (tiny / "val" / "images").mkdir(parents=True)
    Image.new("RGB", (64, 64), colours["dog"]).save(tiny / "val" / "images" / "val_0.JPEG")
    (tiny / "val" / "val_annotations.txt").write_text("val_0.JPEG\tdog\t0\t0\t64\t64\n")
    _, train_y, val_x, val_y, classes = read_image_folder(tiny, 32)
    assert classes == 2 and val_y.tolist() == [1] and val_x.shape == (1, 3, 32, 32)


def test_validation_split_replaces_the_test_set_with_held_out_training_images():
    full = load_dataset("fashion-mnist-mini")
    cfg = DataConfig(dataset="fashion-mnist-mini", validation_split=1000, label_noise=0.4)
    a, b = load_dataset(cfg, seed=0), load_dataset(cfg, seed=5)
    assert len(a.train_labels) == 5000 and len(a.test_labels) == 1000
    assert torch.bincount(a.test_labels).tolist() == [100] * 10
    assert torch.equal(a.test_images, b.test_images)  # the same held-out images for every seed
    held = {bytes(img.numpy()) for img in a.test_images}
    assert not held & {bytes(img.numpy()) for img in a.train_images}  # disjoint from what is trained on
    assert held <= {bytes(img.numpy()) for img in full.train_images}
    assert not torch.equal(a.train_labels, a.clean_train_labels)  # noise only on the training part
