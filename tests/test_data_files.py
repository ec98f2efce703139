"""Readers, search path, manifests and downloads."""

import gzip
import hashlib
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from selfdistill.config import DataConfig
from selfdistill.data import load_dataset
from selfdistill.data.catalog import IDX_FILES, SOURCES
from selfdistill.data.cifar import load_batch
from selfdistill.data.idx import read_idx, write_idx
from selfdistill.data.sources import Download, Source, data_roots, locate, user_cache
from selfdistill.errors import UserError


def make_idx_folder(folder, n_train=20, n_test=10, size=28):
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    arrays = [torch.randint(0, 256, (n_train, size, size), dtype=torch.uint8, generator=gen),
              torch.arange(n_train, dtype=torch.uint8) % 10,
              torch.randint(0, 256, (n_test, size, size), dtype=torch.uint8, generator=gen),
              torch.arange(n_test, dtype=torch.uint8) % 10]
    for name, array in zip(IDX_FILES, arrays):
        write_idx(folder / name, array)
    return arrays


def test_idx_round_trip_compressed_and_plain(tmp_path):
    array = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    write_idx(tmp_path / "a.gz", array)
    assert torch.equal(read_idx(tmp_path / "a.gz"), array)
    (tmp_path / "a").write_bytes(gzip.decompress((tmp_path / "a.gz").read_bytes()))
    assert torch.equal(read_idx(tmp_path / "a"), array)


@pytest.mark.parametrize("damage", ["truncate", "magic", "garbage_gzip"])
def test_corrupt_idx_files_raise_one_line_errors(tmp_path, damage):
    write_idx(tmp_path / "a.gz", torch.zeros(2, 3, dtype=torch.uint8))
    raw = gzip.decompress((tmp_path / "a.gz").read_bytes())
    if damage == "truncate":
        (tmp_path / "a.gz").write_bytes(gzip.compress(raw[:-1]))
    elif damage == "magic":
        (tmp_path / "a.gz").write_bytes(gzip.compress(b"\x01" + raw[1:]))
    else:
        (tmp_path / "a.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError) as err:
        read_idx(tmp_path / "a.gz")
    assert "a.gz" in str(err.value) and "\n" not in str(err.value)


def test_idx_dataset_loads_from_data_dir_with_uncompressed_files_too(tmp_path):
    arrays = make_idx_folder(tmp_path / "fashion-mnist")
    # replace one file by its uncompressed form: still found
    gz = tmp_path / "fashion-mnist" / IDX_FILES[3]
    gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    data = load_dataset(DataConfig(dataset="fashion-mnist", data_dir=str(tmp_path), download=False))
    assert data.train_images.shape == (20, 1, 28, 28) and data.train_images.dtype == torch.uint8
    assert torch.equal(data.train_images[:, 0], arrays[0])
    assert torch.equal(data.test_labels, arrays[3].long())


def test_search_order_is_data_dir_then_env_then_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFDISTILL_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_roots(None) == [tmp_path / "env", tmp_path / "xdg" / "selfdistill"]
    assert data_roots(str(tmp_path / "explicit")) == [tmp_path / "explicit"]
    make_idx_folder(tmp_path / "xdg" / "selfdistill" / "mnist")
    found = locate(SOURCES["mnist"], None, download=False)
    assert found[IDX_FILES[0]].parent == tmp_path / "xdg" / "selfdistill" / "mnist"


def test_manifest_mismatch_is_an_error(tmp_path):
    make_idx_folder(tmp_path / "mnist")
    digest = hashlib.sha256((tmp_path / "mnist" / IDX_FILES[0]).read_bytes()).hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{digest}  mnist/{IDX_FILES[0]}\n{'0' * 64}  mnist/{IDX_FILES[1]}\n")
    with pytest.raises(UserError, match="checksum mismatch.*train-labels"):
        load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path)))


def test_missing_data_without_download_says_where_to_put_it(tmp_path):
    with pytest.raises(UserError) as err:
        load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path), download=False))
    assert str(tmp_path / "mnist") in str(err.value) and "downloading is off" in str(err.value)


def test_download_failure_is_one_clear_line_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    source = Source("thing", ("x.gz",), (Download("http://127.0.0.1:9/x.gz", "0" * 64),))
    with pytest.raises(UserError, match="could not download http://127.0.0.1:9/x.gz"):
        locate(source, None, download=True)
    assert not (user_cache() / "thing").exists()


def test_download_is_verified_before_use(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    served = tmp_path / "served.gz"
    served.write_bytes(b"payload")
    good = hashlib.sha256(b"payload").hexdigest()
    bad_source = Source("thing", ("served.gz",), (Download(served.as_uri(), "f" * 64),))
    with pytest.raises(UserError, match="checksum mismatch"):
        locate(bad_source, None, download=True)
    assert not (user_cache() / "thing").exists()  # nothing unverified was kept
    source = Source("thing", ("served.gz",), (Download(served.as_uri(), good),))
    found = locate(source, None, download=True)
    assert found["served.gz"].read_bytes() == b"payload"
    assert good in (user_cache() / "thing" / "SHA256SUMS").read_text()
    found["served.gz"].write_bytes(b"tampered")  # a later load notices
    with pytest.raises(UserError, match="checksum mismatch"):
        locate(source, None, download=True)


def _cifar_archive(tmp_path, n=4):
    folder = tmp_path / "build" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return archive


def test_cifar_download_unpacks_a_verified_archive(tmp_path, monkeypatch):
    archive = _cifar_archive(tmp_path)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(SOURCES, "cifar10", Source("cifar-10-batches-py", SOURCES["cifar10"].files,
                                                   (Download(archive.as_uri(), digest, "tar"),)))
    data = load_dataset(DataConfig(dataset="cifar10", data_dir=str(tmp_path / "root")))
    assert data.train_images.shape == (20, 3, 32, 32) and data.test_images.shape == (4, 3, 32, 32)
    assert data.num_classes == 10 and data.in_channels == 3


def test_cifar_reader_refuses_code_in_pickles(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Exploit(), b"labels": [0]}))
    with pytest.raises(UserError, match="not allowed"):
        load_batch(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_reader_reads_numpy_arrays_of_any_protocol(tmp_path, protocol):
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": data, b"fine_labels": [5, 99]}, protocol=protocol))
    batch = load_batch(path)
    assert torch.equal(batch["data"], torch.from_numpy(data)) and batch["fine_labels"] == [5, 99]


def test_bundled_dataset_is_real_balanced_and_verified():
    data = load_dataset("fashion-mnist-mini")
    assert data.train_images.shape == (6000, 1, 28, 28) and data.test_images.shape == (2000, 1, 28, 28)
    assert torch.bincount(data.train_labels).tolist() == [600] * 10
    assert torch.bincount(data.test_labels).tolist() == [200] * 10
    assert data.train_images.float().std() > 50  # real images, not blanks
