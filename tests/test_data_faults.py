"""Bad data inputs end in one clear line (``UserError``), never a traceback; the decoded-image cache and the
downloads never write through planted symlinks. Every file here is tiny and made in ``tmp_path``."""

import gzip
import hashlib
import http.client
import io
import math
import os
import pickle
import struct
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfdistill import fileio
from selfdistill.config import DataConfig
from selfdistill.data import load_dataset
from selfdistill.data.catalog import IDX_FILES, SOURCES
from selfdistill.data.cifar import load_batch, read_cifar_split
from selfdistill.data.idx import read_idx, write_idx
from selfdistill.data.image_folder import read_image_folder
from selfdistill.data.labels import balanced_subset
from selfdistill.data.sources import Download, Source, locate
from selfdistill.errors import UserError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def one_line_error(call, *names: object) -> str:
    """Run ``call``, which must raise a one-line ``UserError`` mentioning every one of ``names``."""
    with pytest.raises(UserError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message, message
    for name in names:
        assert str(name) in message, f"{name} not in {message!r}"
    return message


# ----------------------------------------------------------------------------- IDX files
def idx_bytes(dims, data: bytes | None = None) -> bytes:
    """A raw (uncompressed) unsigned-byte IDX file; ``data`` defaults to zeros of the declared size."""
    header = bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
    return header + (bytes(math.prod(dims)) if data is None else data)


def write_raw_idx(path: Path, raw: bytes) -> Path:
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def make_idx_root(root: Path, folder="mnist", n_train=60, n_test=20, train_size=4, test_size=4, train_labels=None,
                  train_dims=None):
    """A data root with an IDX dataset; training image i holds the value i in its first pixel."""
    (root / folder).mkdir(parents=True)
    train = torch.zeros(n_train, train_size, train_size, dtype=torch.uint8)
    train[:, 0, 0] = torch.arange(n_train, dtype=torch.uint8)
    labels = torch.arange(n_train, dtype=torch.uint8) % 10 if train_labels is None else train_labels
    arrays = [train if train_dims is None else torch.zeros(train_dims, dtype=torch.uint8), labels,
              torch.zeros(n_test, test_size, test_size, dtype=torch.uint8),
              torch.arange(n_test, dtype=torch.uint8) % 10]
    for name, array in zip(IDX_FILES, arrays):
        write_idx(root / folder / name, array)
    return root


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("dims", [(0, 28, 28), (5, 0, 28), (0,)])
def test_idx_files_without_elements_are_refused(tmp_path, suffix, dims):
    path = write_raw_idx(tmp_path / f"images{suffix}", idx_bytes(dims))
    one_line_error(lambda: read_idx(path), path, "no images")


def test_a_dataset_whose_idx_images_hold_no_images_is_refused(tmp_path):
    make_idx_root(tmp_path)
    path = write_raw_idx(tmp_path / "mnist" / IDX_FILES[2], idx_bytes((0, 4, 4)))
    one_line_error(lambda: load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path), download=False)), path)


def test_idx_images_and_labels_of_different_counts_name_both_files(tmp_path):
    make_idx_root(tmp_path, train_labels=torch.arange(59, dtype=torch.uint8) % 10)
    one_line_error(lambda: load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path), download=False)),
                   tmp_path / "mnist" / IDX_FILES[0], tmp_path / "mnist" / IDX_FILES[1], "disagree")


@pytest.mark.parametrize("dims", [(60, 16), (60, 2, 4, 4), (60,)])
def test_idx_images_that_are_not_a_stack_of_2d_images_name_the_file(tmp_path, dims):
    make_idx_root(tmp_path, train_dims=dims)
    one_line_error(lambda: load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path), download=False)),
                   tmp_path / "mnist" / IDX_FILES[0], "expected 3-D")


def test_idx_labels_beyond_the_classes_name_the_file(tmp_path):
    make_idx_root(tmp_path, train_labels=torch.arange(60, dtype=torch.uint8) % 13)
    one_line_error(lambda: load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path), download=False)),
                   tmp_path / "mnist" / IDX_FILES[1], "label 12")


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("raw", [
    idx_bytes((1,) * 100, b"\x07"),  # more dimensions than a tensor may have
    idx_bytes((2**32 - 1,) * 3, b"\x00" * 16),  # an enormous declared size, 16 bytes of data
    idx_bytes((2, 3), bytes(6) + b"extra"),  # data after the declared array
    idx_bytes((2, 3), bytes(5)),  # truncated data
    b"\x00\x00\x08\x03\x00\x00",  # truncated header
    b"\x00\x00\x08\x00",  # no dimensions
    b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00\x00\x00\x00",  # a float IDX file
])
def test_damaged_idx_headers_are_one_line(tmp_path, suffix, raw):
    path = write_raw_idx(tmp_path / f"damaged{suffix}", raw)
    one_line_error(lambda: read_idx(path), path)


def test_a_gzip_bomb_is_refused_without_inflating_it(tmp_path):
    """The header declares 6 bytes of data; the stream inflates to 64 MiB. Reading stops at the 7th byte."""
    path = tmp_path / "bomb.gz"
    with gzip.open(path, "wb") as out:
        out.write(idx_bytes((2, 3), b""))
        for _ in range(64):
            out.write(bytes(1 << 20))
    tracemalloc.start()
    try:
        one_line_error(lambda: read_idx(path), path, "more than 6 bytes")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def valid_idx_files() -> list[bytes]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8, generator=gen)
    return [idx_bytes((3, 4, 5), images.numpy().tobytes()), idx_bytes((7,), bytes(range(7)))]


@st.composite
def mutated(draw, valid: list[bytes]) -> bytes:
    """One of ``valid`` with a few random byte changes, cuts, insertions and deletions, most of them near
    the start or the end of the file where its structure is."""
    data = bytearray(draw(st.sampled_from(valid)))
    for _ in range(draw(st.integers(1, 5))):
        end = max(len(data) - 1, 0)
        pos = draw(st.one_of(st.integers(0, min(end, 64)), st.integers(max(0, end - 64), end), st.integers(0, end)))
        kind = draw(st.sampled_from(["set", "cut", "insert", "delete"]))
        if kind == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=9))
        else:
            del data[pos:pos + draw(st.integers(1, 9))]
    return bytes(data)


IDX_INPUTS = st.one_of(
    st.tuples(st.sampled_from([".gz", ""]), st.binary(max_size=64)),
    st.tuples(st.just(".gz"), st.binary(max_size=64).map(lambda b: b"\x1f\x8b\x08" + b)),
    st.tuples(st.sampled_from([".gz", ""]), mutated(valid_idx_files())),
    st.tuples(st.just(".gz"), mutated(valid_idx_files()).map(gzip.compress)),  # damaged content, sound gzip
    st.tuples(st.just(".gz"), mutated([gzip.compress(raw) for raw in valid_idx_files()])),  # damaged gzip
)


@FUZZ
@given(case=IDX_INPUTS)
def test_fuzzed_idx_files_give_an_array_or_a_one_line_error(tmp_path, case):
    suffix, content = case
    path = tmp_path / f"fuzzed{suffix}"
    path.write_bytes(content)
    try:
        array = read_idx(path)
    except UserError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
    else:
        assert array.dtype == torch.uint8 and array.numel() > 0
