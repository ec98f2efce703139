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

from conftest import cli_main
from selfdistill import cpus as cpu_info
from selfdistill import fileio
from selfdistill.config import DataConfig
from selfdistill.data import idx, load_dataset
from selfdistill.data.idx import read_idx, write_idx
from selfdistill.engine import resolve, runtime
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


def test_a_cache_that_cannot_be_written_is_skipped(tmp_path, cache, source, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file"))  # the cache folder cannot be created
    assert torch.equal(read_idx(source), IMAGES)
    assert torch.equal(read_idx(source), IMAGES)

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the cache fixture's folder again

    def full(fd, chunk):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(fileio, "_write_chunk", full)
    assert torch.equal(read_idx(source), IMAGES)
    assert list(cache.iterdir()) == []  # no cache file, no temporary left behind


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


# ----------------------------------------------------------------------------- threads
@pytest.fixture
def cpus(monkeypatch, tmp_path):
    """Set the CPUs this process may run on; no cgroup quota, no local processes unless a test says so."""
    monkeypatch.setattr(cpu_info, "PROC_CGROUP", tmp_path / "no-cgroup")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    return lambda n: monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)


@pytest.mark.parametrize("usable, local, threads, how", [
    (8, None, 8, "8 CPUs usable"),
    (1, None, 1, "1 CPU usable"),
    (8, "3", 2, "8 CPUs usable / 3 processes on this machine"),
    (2, "4", 1, "2 CPUs usable / 4 processes on this machine"),  # at least one
    (6, "not a number", 6, "6 CPUs usable"),
])
def test_auto_threads_share_the_usable_cpus_among_local_processes(cpus, monkeypatch, usable, local, threads, how):
    cpus(usable)
    if local is not None:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    assert cpu_info.auto_threads() == (threads, how)


def test_auto_threads_without_affinity_count_all_cpus(cpus, monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 12)
    assert cpu_info.auto_threads() == (12, "12 CPUs usable")


def test_auto_threads_obey_the_tightest_cgroup_quota(cpus, monkeypatch, tmp_path):
    cpus(16)
    root = tmp_path / "cgroup"  # where cgroup v2 is mounted
    (root / "jobs" / "mine").mkdir(parents=True)
    (tmp_path / "cpu.max").write_text("100000 100000\n")  # above the mount: not a cgroup, never read
    (root / "cpu.max").write_text("800000 100000\n")
    (root / "jobs" / "cpu.max").write_text("300000 100000\n")
    (root / "jobs" / "mine" / "cpu.max").write_text("max 100000\n")
    (tmp_path / "self-cgroup").write_text("1:cpu:/elsewhere\n0::/jobs/mine\n")
    monkeypatch.setattr(cpu_info, "CGROUP", root)
    monkeypatch.setattr(cpu_info, "PROC_CGROUP", tmp_path / "self-cgroup")
    assert cpu_info.auto_threads() == (3, "a CPU quota of 3 of 16 CPUs")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert cpu_info.auto_threads() == (1, "a CPU quota of 3 of 16 CPUs / 2 processes on this machine")
    (root / "jobs" / "cpu.max").write_text("50000 100000\n")  # half a CPU: still one thread
    assert cpu_info.auto_threads()[0] == 1
    (root / "jobs" / "cpu.max").write_text("max 100000\n")
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert cpu_info.auto_threads() == (8, "a CPU quota of 8 of 16 CPUs")
    (root / "cpu.max").unlink()
    assert cpu_info.auto_threads() == (16, "16 CPUs usable")


@pytest.mark.parametrize("setting, expected", [("auto", 1), (2, 2), (None, "unchanged")])
def test_configure_torch_sets_the_resolved_count(cpus, setting, expected):
    cpus(1)
    torch.set_num_threads(3)
    runtime.configure_torch(resolve([{"train": {"threads": setting}}]).train, torch.device("cpu"))
    assert torch.get_num_threads() == (3 if expected == "unchanged" else expected)


def test_threads_take_auto_null_or_a_count():
    assert resolve([]).train.threads == "auto"
    for value, resolved in (("auto", "auto"), (None, None), (4, 4), ("4", 4)):
        assert resolve([{"train": {"threads": value}}]).train.threads == resolved
    for bad in (0, -1, 1025, 1.5, "fast", True, [2]):
        with pytest.raises(UserError, match=r"^train\.threads=") as caught:
            resolve([{"train": {"threads": bad}}])
        assert len(str(caught.value).splitlines()) == 1


@pytest.mark.parametrize("args", [["--threads", "0"], ["--set", "train.threads=auto2"], ["--set", "train.threads=0"]])
def test_bad_threads_on_the_command_line_exit_2_in_one_line(capsys, args):
    code, _, err = cli_main(capsys, "train", "--dataset", "synthetic", *args, "--print-config")
    assert code == 2 and len(err) == 1 and "train.threads" in err[0]


TINY = ["--device", "cpu",  # the CPU's thread count is what these tests are about, also on a machine with a GPU
        "--dataset", "synthetic", "--model", "mlp", "--batch-size", "16", "--set", "train.progress=false",
        "--set", "data.synthetic={train_size: 32, test_size: 16, size: 8}", "--set", "train.tensorboard=false",
        "--set", "schedule.name=constant"]


def test_the_start_line_says_how_auto_chose_and_resume_compares_the_count(cpus, tmp_path, capsys):
    out = str(tmp_path / "run")
    cpus(1)
    code, stdout, _ = cli_main(capsys, "train", *TINY, "--epochs", "1", "--out", out)
    assert code == 0 and "| cpu, 1 thread (auto: 1 CPU usable)\n" in stdout
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["runtime"]["threads"] == 1
    cpus(2)  # the same run on a machine where auto chooses another count
    code, _, err = cli_main(capsys, "train", *TINY, "--epochs", "2", "--out", out, "--resume")
    assert code == 2 and len(err) == 1 and "trained with cpu, fp32, 1 threads, now with cpu, fp32, 2 threads" in err[0]
    code, stdout, _ = cli_main(capsys, "train", *TINY, "--epochs", "2", "--out", out, "--resume", "--threads", "1")
    assert code == 0 and "| cpu, 1 thread\n" in stdout and "extending" in stdout
