"""The user's own image folders (``--dataset folder``) and image trees read straight from tar archives:
odd image formats, nested folders, refused layouts, archive reading equal to unpacked reading, hostile
archives, the catalogue's archives, and class names in the model card. Every file is tiny and made in
``tmp_path``, except the real archives of SELFDISTILL_DATA, of which only the listing and a few members are read."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from conftest import cli_main, one_line_error
from selfdistill.config import DataConfig
from selfdistill.data import archive, load_dataset
from selfdistill.data.archive import archive_tree, decode_archive
from selfdistill.data.classes import CIFAR10
from selfdistill.data.image_folder import read_image_tree
from selfdistill.data.tree import class_names, list_samples

RED, BLUE = (255, 0, 0), (0, 0, 255)


def save(path: Path, image: Image.Image, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt)


def make_tree(root: Path) -> Path:
    """Three classes in several formats and modes, images nested in sub-folders, files that are not images."""
    save(root / "train" / "cat" / "red.png", Image.new("RGB", (12, 10), RED))
    save(root / "train" / "cat" / "nested" / "deeper" / "blue.jpg", Image.new("RGB", (16, 16), BLUE))
    save(root / "train" / "dog" / "grey.png", Image.new("L", (16, 16), 100))
    save(root / "train" / "dog" / "cmyk.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG")  # red ink
    save(root / "train" / "bird" / "sixteen.png", Image.new("I;16", (16, 16), 0x8000))
    save(root / "train" / "bird" / "palette.gif", Image.new("P", (16, 16), 3))
    save(root / "train" / "bird" / "alpha.webp", Image.new("RGBA", (16, 16), (0, 200, 0, 128)))
    save(root / "val" / "cat" / "a.bmp", Image.new("RGB", (16, 16), RED))
    save(root / "val" / "dog" / "b.tiff", Image.new("RGB", (16, 16), BLUE))
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0\1 not an image")
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    return root


def tar_tree(folder: Path, target: Path, top: str | None = "mine") -> Path:
    """``folder`` packed into ``target`` (mode by suffix), under ``top/`` or at the archive's top."""
    mode = "w:gz" if target.name.endswith("gz") else "w"
    with tarfile.open(target, mode) as tar:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            tar.add(path, arcname=f"{top}/{rel}" if top else rel, recursive=False)
    return target


def close(pixel: list[int], colour: tuple[int, ...]) -> bool:
    """Equal up to lossy compression."""
    return max(abs(a - b) for a, b in zip(pixel, colour)) < 8


def folder_data(path: Path, size: int = 8):
    return load_dataset(DataConfig(dataset="folder", folder=str(path), image_size=size))


def test_a_folder_of_odd_formats_nested_folders_and_other_files_is_read(tmp_path):
    data = folder_data(make_tree(tmp_path / "mine"))
    assert data.class_names == ("bird", "cat", "dog") and data.num_classes == 3
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 2, 2]  # sorted paths within each class, nested included
    pixel = {i: data.train_images[i, :, 4, 4].tolist() for i in range(7)}
    assert close(pixel[0], (0, 200, 0))  # (lossy) webp with alpha: the colour, alpha dropped
    assert pixel[2] == [128, 128, 128]  # 16-bit grey 0x8000 scaled to 8 bits, not clipped to white
    assert close(pixel[3], BLUE)  # nested JPEG
    assert pixel[4] == list(RED)  # a non-square PNG, resized
    assert close(pixel[5], RED)  # CMYK JPEG converted to RGB
    assert pixel[6] == [100, 100, 100]  # grey PNG over three channels
    assert data.test_labels.tolist() == [1, 2] and data.test_images[0, :, 0, 0].tolist() == list(RED)


@pytest.mark.parametrize("layout, expected", [
    ("empty_class", "class folder train/empty holds no images"),
    ("class_only_in_val", "has class folders that train/ lacks: fox"),
    ("unreadable", "grey.png cannot be decoded"),
    ("no_val", "has neither val/ nor test/"),
    ("one_class", "needs at least two class folders"),
])
def test_refused_folders_are_one_line(tmp_path, layout, expected):
    root = make_tree(tmp_path / "mine")
    if layout == "empty_class":
        (root / "train" / "empty").mkdir()
        (root / "train" / "empty" / "readme.txt").write_text("no images here")
    elif layout == "class_only_in_val":
        save(root / "val" / "fox" / "x.png", Image.new("RGB", (8, 8), RED))
    elif layout == "unreadable":
        (root / "train" / "dog" / "grey.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    elif layout == "no_val":
        for path in sorted((root / "val").rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (root / "val").rmdir()
    else:
        for name in ("dog", "bird"):
            for path in sorted((root / "train" / name).rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
            (root / "train" / name).rmdir()
    one_line_error(lambda: folder_data(root), expected)
    packed = tar_tree(root, tmp_path / "mine.tar.gz")  # the same from its archive
    one_line_error(lambda: folder_data(packed), expected)


def make_tiny_layout(root: Path) -> Path:
    for wnid, colour in (("n02", BLUE), ("n01", RED)):
        for i in range(2):
            save(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", Image.new("RGB", (16, 16), colour))
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("boxes")
    save(root / "val" / "images" / "val_0.JPEG", Image.new("RGB", (16, 16), BLUE))
    save(root / "val" / "images" / "val_1.JPEG", Image.new("RGB", (16, 16), RED))
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t8\t8\nval_1.JPEG\tn01\t0\t0\t8\t8\n")
    (root / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tbullfrog\n")
    save(root / "test" / "images" / "test_0.JPEG", Image.new("RGB", (16, 16), RED))
    return root


@pytest.mark.parametrize("layout", ["generic", "tiny"])
@pytest.mark.parametrize("archive_name, top", [("x.tar.gz", "mine"), ("x.tar", None), ("x.tgz", "mine")])
def test_an_archive_reads_image_for_image_as_its_unpacked_folder(tmp_path, layout, archive_name, top):
    root = (make_tree if layout == "generic" else make_tiny_layout)(tmp_path / "mine")
    unpacked = read_image_tree(root, 8)
    packed = read_image_tree(tar_tree(root, tmp_path / archive_name, top), 8)
    for a, b in zip(unpacked, packed):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    assert packed.class_names == (("bird", "cat", "dog") if layout == "generic" else ("goldfish", "bullfrog"))


def test_an_archive_is_cached_by_its_content(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("SELFDISTILL_NO_CACHE")
    root = make_tree(tmp_path / "mine")
    path = tar_tree(root, tmp_path / "mine.tar.gz")
    first = read_image_tree(path, 8)
    assert len(list((tmp_path / "xdg" / "selfdistill" / "decoded").glob("mine.tar.gz-8-*.pt"))) == 1
    monkeypatch.setattr(archive, "_index", lambda *a: pytest.fail("a cached archive is not listed again"))
    again = read_image_tree(path, 8)
    assert all(torch.equal(a, b) for a, b in zip(first[:4], again[:4])) and again.class_names == first.class_names
    save(root / "train" / "cat" / "red.png", Image.new("RGB", (12, 10), BLUE))  # other content: decoded again
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("SELFDISTILL_NO_CACHE", "0")
    changed = read_image_tree(tar_tree(root, tmp_path / "mine.tar.gz"), 8)
    assert changed.train_x[4, :, 0, 0].tolist() == list(BLUE)


# ----------------------------------------------------------------------------- hostile and damaged archives
def add(tar: tarfile.TarFile, name: str, data: bytes = b"", **fields) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def png(colour=RED) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, "PNG")
    return buffer.getvalue()


def hostile(path: Path, extra) -> Path:
    """A valid two-class archive plus whatever ``extra(tar)`` adds."""
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "val"):
            for name in ("cat", "dog"):
                add(tar, f"d/{split}/{name}/0.png", png())
        extra(tar)
    return path


HOSTILE = {
    "absolute": (lambda t: add(t, "/etc/evil.png", png()), "an absolute path or a '..' component"),
    "dotdot": (lambda t: add(t, "d/train/cat/../../../evil.png", png()), "an absolute path or a '..' component"),
    "symlink": (lambda t: add(t, "d/train/cat/1.png", type=tarfile.SYMTYPE, linkname="/etc/passwd"),
                "is a symbolic link"),
    "hardlink": (lambda t: add(t, "d/train/cat/1.png", type=tarfile.LNKTYPE, linkname="d/train/dog/0.png"),
                 "is a hard link"),
    "fifo": (lambda t: add(t, "d/train/cat/1.png", type=tarfile.FIFOTYPE), "special file"),
    "device": (lambda t: add(t, "d/train/cat/1.png", type=tarfile.CHRTYPE, devmajor=1, devminor=5),
               "special file"),
    "duplicate": (lambda t: add(t, "d/./train/cat/0.png", png(BLUE)), "appears twice"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_in_one_line(tmp_path, case):
    extra, expected = HOSTILE[case]
    path = hostile(tmp_path / "evil.tar.gz", extra)
    one_line_error(lambda: folder_data(path), f"archive {path}", expected)


def test_a_decompression_bomb_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    path = hostile(tmp_path / "bomb.tar.gz", lambda t: add(t, "d/zeros.bin", b"\0" * (4 << 20)))
    assert path.stat().st_size < 20_000
    monkeypatch.setattr(archive, "EXPANSION_SLACK", 1 << 20)  # as if the archive were a hundred times larger
    read = []
    real_read = archive._read
    monkeypatch.setattr(archive, "_read", lambda tar, member: read.append(member.name) or real_read(tar, member))
    one_line_error(lambda: folder_data(path), "expands to more than 100 times its size")
    assert "d/zeros.bin" not in read


def test_too_many_members_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "MAX_MEMBERS", 5)
    path = hostile(tmp_path / "many.tar.gz", lambda t: [add(t, f"d/x{i}") for i in range(3)])
    one_line_error(lambda: folder_data(path), "holds more than 5 members")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "bad_image", "missing_annotated"])
def test_damaged_archives_are_one_line(tmp_path, damage):
    path = tmp_path / "damaged.tar.gz"
    if damage == "missing_annotated":
        root = make_tiny_layout(tmp_path / "tiny")
        (root / "val" / "images" / "val_1.JPEG").unlink()
        expected = "lacks 'mine/val/images/val_1.JPEG', which val/val_annotations.txt lists"
        tar_tree(root, path)
    elif damage == "bad_image":
        hostile(path, lambda t: add(t, "d/train/cat/1.png", png()[:40]))
        expected = f"image {path}:d/train/cat/1.png cannot be decoded"
    else:
        good = hostile(tmp_path / "good.tar.gz", lambda t: None).read_bytes()
        path.write_bytes({"truncated": good[: len(good) // 2], "garbage": os.urandom(2000), "empty": b""}[damage])
        expected = "it is damaged, truncated or not a tar archive"
    one_line_error(lambda: folder_data(path), f"{path}", expected)


def test_the_cli_refuses_a_hostile_archive_with_exit_2_and_writes_nothing(tmp_path, capsys):
    path = hostile(tmp_path / "evil.tar.gz", HOSTILE["symlink"][0])
    code, _, err = cli_main(capsys, "train", "--dataset", "folder", "--data-dir", str(path), "--model", "mlp",
                            "--epochs", "1", "--out", str(tmp_path / "run"), "--device", "cpu")
    assert code == 2 and len(err) == 1 and "is a symbolic link" in err[0]
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- the catalogue, the CLI, the card
def test_a_folder_run_records_the_folder_and_its_class_names_in_the_model_card(tmp_path, capsys):
    root = make_tree(tmp_path / "mine")
    code, _, err = cli_main(capsys, "train", "--dataset", "folder", "--data-dir", str(root), "--model", "mlp",
                            "--epochs", "1", "--batch-size", "4", "--out", str(tmp_path / "run"), "--device", "cpu",
                            "--set", "data.image_size=8", "--set", "train.progress=false")
    assert code == 0, err
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["dataset"] == "folder" and card["class_names"] == ["bird", "cat", "dog"]
    data = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]
    assert data["folder"] == str(root) and data["data_dir"] is None


def test_folder_needs_a_path_and_data_folder_only_goes_with_it(tmp_path, capsys):
    one_line_error(lambda: load_dataset(DataConfig(dataset="folder")), "--dataset folder needs the folder")
    one_line_error(lambda: folder_data(tmp_path / "nowhere"), "does not exist")
    code, _, err = cli_main(capsys, "train", "--dataset", "cifar10", "--set", f"data.folder={tmp_path}",
                            "--print-config")
    assert code == 2 and len(err) == 1 and "data.folder" in err[0]


@pytest.mark.parametrize("where", ["tiny-imagenet/tiny-imagenet-200.tar.gz", "tiny-imagenet-200.tar.gz"])
def test_tiny_imagenet_is_found_as_an_archive_in_a_data_root_and_checked(tmp_path, monkeypatch, where):
    root = tmp_path / "root"
    (root / where).parent.mkdir(parents=True, exist_ok=True)
    tar_tree(make_tiny_layout(tmp_path / "tiny"), root / where, "tiny-imagenet-200")
    monkeypatch.setenv("SELFDISTILL_DATA", str(root))
    data = load_dataset(DataConfig(dataset="tiny-imagenet", image_size=8))
    assert data.class_names == ("goldfish", "bullfrog") and data.test_labels.tolist() == [1, 0]
    (root / "SHA256SUMS").write_text(f"{'0' * 64}  {where}\n")
    one_line_error(lambda: load_dataset(DataConfig(dataset="tiny-imagenet", image_size=8)), "checksum mismatch")


def test_an_unpacked_tree_in_the_same_root_is_preferred_to_the_archive(tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "cifar10-jpeg").mkdir(parents=True)
    (root / "cifar10-jpeg" / "cifar10-jpeg.tar.gz").write_bytes(b"damaged, and never read")
    tree = make_tree(root / "cifar10-jpeg")
    os.rename(tree / "val", tree / "test")
    data = load_dataset(DataConfig(dataset="cifar10-jpeg", data_dir=str(root), image_size=8))
    assert data.class_names == ("bird", "cat", "dog")


def test_the_datasets_listing_names_the_archives_and_the_lossy_copy(capsys):
    code, out, _ = cli_main(capsys, "datasets")
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert code == 0 and "LOSSY" in lines["cifar10-jpeg"] and "never compare" in lines["cifar10-jpeg"]
    assert "tiny-imagenet-200.tar.gz" in lines["tiny-imagenet"] and "--data-dir PATH" in lines["folder"]


# ----------------------------------------------------------------------------- the real archives
def real_archive(rel: str) -> Path:
    root = os.environ.get("SELFDISTILL_DATA")
    if root and (Path(root) / rel).is_file():
        return Path(root) / rel
    if os.environ.get("SELFDISTILL_REQUIRE_DATA") == "1":
        pytest.fail(f"SELFDISTILL_DATA must point at a data root with {rel} (CI requires real data)")
    pytest.skip(f"{rel} not found: set SELFDISTILL_DATA to a data root that has it")


@pytest.mark.parametrize("rel, classes, per_class, first", [
    ("tiny-imagenet/tiny-imagenet-200.tar.gz", 200, (500, 50), "goldfish"),
    ("cifar10-jpeg/cifar10-jpeg.tar.gz", 10, (5000, 1000), "airplane"),
])
def test_the_real_archives_list_as_published_and_decode_as_their_members(rel, classes, per_class, first):
    """The listing (one pass, no decoding), and a few images per split decoded from the archive equal to the
    same members taken out with tarfile and decoded from a folder."""
    path = real_archive(rel)
    tree, prefix = archive_tree(path)
    names, train, val = list_samples(tree)
    assert len(names) == classes
    for samples, count in zip((train, val), per_class):
        assert torch.bincount(torch.tensor([y for _, y in samples])).tolist() == [count] * classes
    few = train[:3]  # the first members: the decoding pass stops after them
    decoded = decode_archive(path, prefix, few, 32, "a few")
    with tarfile.open(path, "r|gz") as tar:
        members = {}
        for member in tar:
            if member.name in {prefix + p for p, _ in few}:
                members[member.name] = tar.extractfile(member).read()
            if len(members) == len(few):
                break
    for image, (rel_path, _) in zip(decoded, few):
        expected = Image.open(io.BytesIO(members[prefix + rel_path])).convert("RGB").resize((32, 32), Image.BILINEAR)
        assert torch.equal(image.permute(1, 2, 0), torch.frombuffer(bytearray(expected.tobytes()),
                                                                    dtype=torch.uint8).view(32, 32, 3))
    named = class_names(tree, names)
    assert named[0] == first and (classes != 10 or named == CIFAR10)
