"""Start-up costs (issue 10): the IDX decode cache never serves other data than the source file holds, and
``train.threads: auto`` takes the CPUs this process may use, shared among the processes of the machine."""

from __future__ import annotations

import errno
import gzip
import hashlib
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfdistill import fileio
from selfdistill.config import DataConfig
from selfdistill.data import idx, load_dataset
from selfdistill.data.idx import read_idx, write_idx
from selfdistill.errors import UserError

IMAGES = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The decode cache's folder, below a private XDG_CACHE_HOME; every gzip file is large enough to be cached."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("SELFDISTILL_NO_CACHE", raising=False)
    monkeypatch.setattr(idx, "MIN_CACHED", 0)
    return tmp_path / "xdg" / "selfdistill" / "decoded"


@pytest.fixture
def source(tmp_path):
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "images.gz"
    write_idx(path, IMAGES)
    return path


def no_inflating(monkeypatch):
    """From here on, opening any gzip stream fails: a read that succeeds came from the cache."""
    def refuse(*args, **kwargs):
        raise AssertionError("the source was inflated")
    monkeypatch.setattr(gzip, "GzipFile", refuse)
    monkeypatch.setattr(gzip, "open", refuse)


def test_a_cache_hit_returns_the_same_tensor_without_inflating(cache, source, monkeypatch):
    first = read_idx(source, ndim=3)
    key = hashlib.sha256(source.read_bytes()).hexdigest()
    assert [p.name for p in cache.iterdir()] == [f"images.gz-{key[:16]}.idx"]
    assert sorted(p.name for p in source.parent.iterdir()) == ["images.gz"]  # nothing written beside the data
    no_inflating(monkeypatch)
    again = read_idx(source, ndim=3)
    assert torch.equal(first, IMAGES) and torch.equal(again, IMAGES) and again.dtype == torch.uint8
    again[0, 0, 0] += 1  # a writable tensor of its own
    with pytest.raises(UserError, match="holds a 3-D array"):
        read_idx(source, ndim=1)  # the dimension check applies to cached arrays too


def test_a_changed_source_of_the_same_size_and_time_is_inflated_again(cache, source):
    def write_stored(array):  # gzip without compression: the size depends only on the array's size
        write_idx(source, array)
        source.write_bytes(gzip.compress(gzip.decompress(source.read_bytes()), compresslevel=0, mtime=0))

    write_stored(IMAGES)
    assert torch.equal(read_idx(source), IMAGES)
    before = source.stat()
    changed = IMAGES.clone()
    changed[1, 2, 3] ^= 1
    write_stored(changed)
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = source.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert torch.equal(read_idx(source), changed)
    assert len(list(cache.iterdir())) == 2  # one entry per content


def cache_file(cache):
    (path,) = cache.iterdir()
    return path


@pytest.mark.parametrize("damage", ["truncated", "payload bit", "crc", "key", "magic", "longer", "empty", "header"])
def test_a_damaged_or_foreign_cache_file_is_ignored_and_rebuilt(cache, source, monkeypatch, damage):
    read_idx(source)
    path = cache_file(cache)
    good = bytearray(path.read_bytes())
    key_at = len(idx.CACHE_MAGIC)
    bad = bytearray(good)
    if damage == "truncated":
        bad = bad[:-1]
    elif damage == "payload bit":
        bad[-1] ^= 0x10
    elif damage == "crc":
        bad[key_at + 32] ^= 1
    elif damage == "key":  # the entry of other compressed bytes, under this name
        bad[key_at + 5] ^= 1
    elif damage == "magic":
        bad[0] ^= 1
    elif damage == "longer":
        bad += b"\0"
    elif damage == "empty":
        bad = bytearray()
    elif damage == "header":  # declares 4 images instead of 3: sizes no longer agree
        bad[key_at + 36 + 7] += 1
    path.write_bytes(bad)
    assert torch.equal(read_idx(source), IMAGES)
    assert path.read_bytes() == good
    no_inflating(monkeypatch)
    assert torch.equal(read_idx(source), IMAGES)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
       cut=st.none() | st.integers(0, 10**6), extra=st.binary(max_size=6))
def test_any_damage_to_a_cache_file_is_never_served(cache, source, flips, cut, extra):
    """Whatever happens to the cache file's bytes, the source's array comes back and the file is made whole
    again (its content is a function of the source): a damaged file is never accepted."""
    read_idx(source)
    path = cache_file(cache)
    good = path.read_bytes()
    bad = bytearray(good)
    for at, value in flips:
        bad[at % len(bad)] = value
    if cut is not None:
        bad = bad[:cut % (len(bad) + 1)]
    path.write_bytes(bytes(bad) + extra)
    assert torch.equal(read_idx(source), IMAGES)
    assert path.read_bytes() == good


def test_a_cache_that_cannot_be_written_is_skipped(tmp_path, source, monkeypatch):
    monkeypatch.setattr(idx, "MIN_CACHED", 0)
    monkeypatch.delenv("SELFDISTILL_NO_CACHE", raising=False)
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file"))  # the cache folder cannot be created
    assert torch.equal(read_idx(source), IMAGES)
    assert torch.equal(read_idx(source), IMAGES)

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    decoded = tmp_path / "xdg" / "selfdistill" / "decoded"

    def full(fd, chunk):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(fileio, "_write_chunk", full)
    assert torch.equal(read_idx(source), IMAGES)
    assert list(decoded.iterdir()) == []  # no cache file, no temporary left behind


def test_a_folder_in_place_of_the_cache_file_is_no_error(cache, source):
    read_idx(source)
    path = cache_file(cache)
    path.unlink()
    path.mkdir()
    assert torch.equal(read_idx(source), IMAGES) and path.is_dir()


def test_small_files_and_selfdistill_no_cache_are_not_cached(cache, source, monkeypatch):
    monkeypatch.setattr(idx, "MIN_CACHED", source.stat().st_size + 1)
    assert torch.equal(read_idx(source), IMAGES) and not cache.exists()
    monkeypatch.setattr(idx, "MIN_CACHED", 0)
    monkeypatch.setenv("SELFDISTILL_NO_CACHE", "1")
    assert torch.equal(read_idx(source), IMAGES) and not cache.exists()
    monkeypatch.setenv("SELFDISTILL_NO_CACHE", "0")
    assert torch.equal(read_idx(source), IMAGES) and cache.exists()


def test_full_fashion_mnist_from_the_cache_equals_the_inflated_files(fashion_root, cache, monkeypatch):
    monkeypatch.setattr(idx, "MIN_CACHED", 1 << 20)  # the default: the two image files are cached
    cfg = DataConfig(dataset="fashion-mnist", data_dir=str(fashion_root), download=False)
    monkeypatch.setenv("SELFDISTILL_NO_CACHE", "1")
    plain = load_dataset(cfg)
    monkeypatch.delenv("SELFDISTILL_NO_CACHE")
    load_dataset(cfg)
    assert sorted(p.name.split("-ubyte")[0] for p in cache.iterdir()) == ["t10k-images-idx3", "train-images-idx3"]
    cached = load_dataset(cfg)
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(cached, field), getattr(plain, field)), field
