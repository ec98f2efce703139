"""Where dataset files are found, how they are verified, and how they are downloaded.

A *data root* holds one folder per dataset (``fashion-mnist/``, ``cifar-10-batches-py/``, ...). The
roots are searched in this order:

1. ``--data-dir`` (``data.data_dir``) if given, and then nothing else;
2. the ``SELFDISTILL_DATA`` environment variable;
3. the user cache, ``$XDG_CACHE_HOME/selfdistill`` (``~/.cache/selfdistill``).

Verification: a root may hold a ``SHA256SUMS`` manifest (lines ``<sha256>  <folder>/<file>``, as
``sha256sum`` writes them), and so may a dataset folder (paths relative to the folder). Every file
that a manifest lists is checked before use; a mismatch is an error, never a silent fallback.

Download: when no root has the files and ``data.download`` is on, the canonical archives are fetched
into the user cache (or into ``--data-dir`` when one was given), checked against the SHA-256 pinned
here *before* they are unpacked, and a manifest of the unpacked files is written beside them so that
later loads verify them too. Offline, this fails with one line that says where the files may go.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, one_line
from ..fileio import LONG_TEXT_LIMIT, atomic_write_bytes, atomic_write_text, read_small_file

MANIFEST = "SHA256SUMS"


@dataclass(frozen=True)
class Download:
    url: str
    sha256: str
    unpack: str = "copy"  # copy (file goes into the dataset folder as is) | tar (archive holds the folder)


@dataclass(frozen=True)
class Source:
    """The files of one dataset: ``folder`` inside a data root, the ``files`` needed, where to get them."""

    folder: str
    files: tuple[str, ...]
    downloads: tuple[Download, ...] = ()
    compressed_alternative: bool = False  # IDX: "x" may also be present as "x.gz" (or the other way round)


def user_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "selfdistill"


def decode_cache_disabled() -> bool:
    """``SELFDISTILL_NO_CACHE`` set to anything but ``0``: decoded data is neither read from nor written to
    the user cache (IDX files and image folders alike)."""
    return os.environ.get("SELFDISTILL_NO_CACHE", "0") != "0"


def data_roots(data_dir: str | None) -> list[Path]:
    """The roots to search, in order (see the module docstring)."""
    if data_dir:
        return [Path(data_dir).expanduser()]
    roots = []
    if os.environ.get("SELFDISTILL_DATA"):
        roots.append(Path(os.environ["SELFDISTILL_DATA"]).expanduser())
    roots.append(user_cache())
    return roots


def locate(source: Source, data_dir: str | None, download: bool) -> dict[str, Path]:
    """Return ``{file name: verified path}`` for every file of ``source``, downloading if allowed."""
    roots = data_roots(data_dir)
    can_download = download and bool(source.downloads)
    why = "downloading is off" if source.downloads else "this dataset has no public download"
    if data_dir:
        _check_data_dir(roots[0], source, can_download, why)
        _refuse_dataset_folder(roots[0], source)
    for root in roots:
        found = _find_files(root / source.folder, source)
        if found is not None:
            verify(root, source.folder, found)
            return found
    searched = ", ".join(str(r / source.folder) for r in roots)
    hint = f"put {', '.join(source.files)} in one of: {searched} (or point --data-dir / SELFDISTILL_DATA at a root)"
    if not can_download:
        raise UserError(f"dataset files not found ({why}); {hint}")
    target = roots[0] if data_dir else user_cache()
    fetch(source, target)
    found = _find_files(target / source.folder, source)
    if found is None:
        raise UserError(f"download into {target} did not produce the expected files; {hint}")
    verify(target, source.folder, found)
    return found


@dataclass(frozen=True)
class TreeSource:
    """An image-tree dataset in a data root: its unpacked ``folder`` (holding ``train/``), or one of its
    ``archives`` (paths relative to the root), read without unpacking."""

    folder: str
    archives: tuple[str, ...]

    def places(self) -> str:
        return " or ".join((f"{self.folder}/ (unpacked)", *self.archives))


def locate_tree(source: TreeSource, data_dir: str | None) -> Path:
    """The unpacked folder or the archive of ``source`` in the first root that has either (the folder first),
    the archive checked against the manifests that list it; there is nothing to download."""
    roots = data_roots(data_dir)
    if data_dir and not roots[0].is_dir():
        state = "is not a directory" if roots[0].exists() else "does not exist and this dataset has no public download"
        raise UserError(f"--data-dir (data.data_dir) {roots[0]} {state}; point it at a data root, the folder that "
                        f"holds {source.places()}")
    if data_dir:
        if roots[0].name == source.folder and (roots[0] / "train").is_dir():
            raise UserError(f"--data-dir (data.data_dir) {roots[0]} is the {source.folder}/ folder itself; point it "
                            f"at its parent, {roots[0].parent}, the data root that holds {source.folder}/")
    for root in roots:
        try:
            if (root / source.folder / "train").is_dir():
                return root / source.folder
            archive = next((root / a for a in source.archives if (root / a).is_file()), None)
        except OSError as exc:
            raise UserError(f"data root {root} cannot be read ({_why(exc)})") from None
        if archive is not None:
            rel = archive.relative_to(root)  # a manifest's name for it: <folder>/<name> in the root's, or <name>
            verify(root, rel.parent.as_posix(), {rel.name: archive})
            return archive
    searched = ", ".join(str(r) for r in roots)
    raise UserError(f"dataset files not found (there is no download); put {source.places()} in one of: {searched} "
                    "(or point --data-dir / SELFDISTILL_DATA at a data root)")


def _check_data_dir(root: Path, source: Source, can_download: bool, why: str) -> None:
    """Refuse a ``--data-dir`` that is not a directory, or that does not exist when nothing can be downloaded
    into it; checked before any download so that nothing is written to a wrong path."""
    try:
        exists, is_dir = root.exists(), root.is_dir()
    except OSError as exc:
        raise UserError(f"--data-dir (data.data_dir) {root} cannot be read ({_why(exc)})") from None
    if exists and not is_dir:
        raise UserError(f"--data-dir (data.data_dir) {root} is not a directory; point it at a data root, the folder "
                        f"that holds (or will receive) {source.folder}/")
    if not exists and not can_download:
        raise UserError(f"--data-dir (data.data_dir) {root} does not exist and {why}; create it and put "
                        f"{', '.join(source.files)} in {root / source.folder}, or fix the path")


def _refuse_dataset_folder(root: Path, source: Source) -> None:
    """A ``--data-dir`` that is the dataset's own folder (it holds the files, or bears the folder's name and
    lacks a folder of that name inside) is a data root given one level too deep: say so, name its parent."""
    if (root / source.folder).is_dir():
        return
    if root.name == source.folder or _find_files(root, source) is not None:
        raise UserError(f"--data-dir (data.data_dir) {root} is the {source.folder}/ folder itself; point it at "
                        f"its parent, {root.parent}, the data root that holds {source.folder}/")


def _find_files(folder: Path, source: Source) -> dict[str, Path] | None:
    """The paths of all the files of ``source`` in ``folder``, or None if one is missing."""
    found = {}
    try:
        for name in source.files:
            candidates = [folder / name]
            if source.compressed_alternative:
                candidates.append(folder / (name[:-3] if name.endswith(".gz") else name + ".gz"))
            path = next((c for c in candidates if c.is_file()), None)
            if path is None:
                return None
            found[name] = path
    except OSError as exc:  # e.g. permission denied on the folder
        raise UserError(f"data folder {folder} cannot be read ({_why(exc)})") from None
    return found


def _why(exc: OSError) -> str:
    """The reason an operating-system call failed, without the path (the message names it already)."""
    return one_line(exc.strerror or exc)


# ----------------------------------------------------------------------------- verification
def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: Path) -> dict[str, str]:
    """Parse a ``sha256sum``-style manifest into ``{relative path: hex digest}``.

    A manifest that is not a UTF-8 text file (a folder, binary data) is refused rather than skipped, as
    it would otherwise silently check nothing.
    """
    raw = read_small_file(path, f"checksum manifest {path}", LONG_TEXT_LIMIT)
    try:
        text = raw.decode("utf-8")
        if "\0" in text:
            raise UnicodeError("a NUL byte")
    except UnicodeError:
        raise UserError(f"checksum manifest {path} is not a text file; it must hold lines '<sha256>  <file>' as "
                        "sha256sum writes them (or be deleted)") from None
    entries = {}
    for line in text.splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2 and len(parts[0]) == 64:
            entries[parts[1].lstrip("*").strip()] = parts[0].lower()
    return entries


def verify(root: Path, folder: str, files: dict[str, Path]) -> None:
    """Check every file against the root's and the folder's manifests, where they list it."""
    manifests = [(root / MANIFEST, f"{folder}/"), (root / folder / MANIFEST, "")]
    for manifest, prefix in manifests:
        if not (manifest.exists() or manifest.is_symlink()):
            continue
        expected = read_manifest(manifest)
        for path in files.values():
            key = prefix + path.name
            if key in expected and _checksum(path) != expected[key]:
                raise UserError(f"checksum mismatch for {path}: it does not match {manifest}; the file is corrupt "
                                "or was replaced (delete it to download again)")


def _checksum(path: Path) -> str:
    try:
        return sha256_of(path)
    except OSError as exc:
        raise UserError(f"data file {path} cannot be read ({_why(exc)})") from None


# ----------------------------------------------------------------------------- download
def fetch(source: Source, root: Path) -> None:
    """Download, verify and unpack ``source`` into ``root / source.folder``."""
    folder = root / source.folder
    created, missing = [], folder  # the folders this download makes, deepest first: a failure leaves none behind
    while not missing.exists():
        created.append(missing)
        missing = missing.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {folder} to download into ({_why(exc)}); point --data-dir or "
                        "SELFDISTILL_DATA at a writable folder") from None
    try:
        for item in source.downloads:
            _fetch_one(item, folder, root, source.files)
    except UserError:
        for made in created:
            if any(made.iterdir()):
                break
            made.rmdir()
        raise


def _fetch_one(item: Download, folder: Path, root: Path, files: tuple[str, ...]) -> None:
    """Download one file, check its SHA-256, then move or unpack it into place.

    The download goes to a fresh ``mkstemp`` file in ``folder`` (a random name, created exclusively,
    so nothing planted at a predictable name is followed), which is removed whatever happens.
    """
    name = item.url.rsplit("/", 1)[-1]
    try:
        fd, partial = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
    except OSError as exc:
        raise UserError(f"cannot write into {folder} ({_why(exc)}); point --data-dir or SELFDISTILL_DATA at a "
                        "writable folder") from None
    try:
        actual = _download(item.url, fd, folder, files)
        if actual != item.sha256:
            raise UserError(f"checksum mismatch for {item.url}: got sha256 {actual}, expected {item.sha256}; "
                            "nothing was kept")
        if item.unpack == "tar":
            written = _untar(Path(partial), root)
        else:
            os.replace(partial, folder / name)  # replaces a symlink planted there, never follows it
            written = [folder / name]
        _update_manifest(folder, written)
    except OSError as exc:
        raise UserError(f"could not store the download of {item.url} in {folder} ({_why(exc)})") from None
    finally:
        Path(partial).unlink(missing_ok=True)


def _download(url: str, fd: int, folder: Path, files: tuple[str, ...]) -> str:
    """Stream ``url`` into the open file ``fd`` (closed here) and return the SHA-256 of what was written."""
    digest = hashlib.sha256()
    try:
        print(f"downloading {url} -> {folder}", flush=True)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"could not download {url} ({one_line(reason)}); put {', '.join(files)} in {folder} "
                        "instead, or point --data-dir / SELFDISTILL_DATA at a data root that has them") from None
    return digest.hexdigest()


def _untar(archive: Path, root: Path) -> list[Path]:
    """Unpack the regular files of a (verified) archive below ``root``.

    Member names that are absolute or contain '..' are skipped, and nothing is written through a
    symbolic link below ``root``: a linked folder on the way is refused, and each file is written to a
    fresh temporary file renamed over the target, which replaces a link there instead of following it.
    """
    written = []
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar.getmembers():
                parts = [p for p in member.name.split("/") if p not in ("", ".")]
                if not member.isfile() or not parts or member.name.startswith("/") or ".." in parts:
                    continue
                target = _unpack_folder(root, parts[:-1]) / parts[-1]
                with tar.extractfile(member) as src:  # type: ignore[union-attr]
                    atomic_write_bytes(target, src.read())
                written.append(target)
    except tarfile.TarError as exc:
        raise UserError(f"the downloaded archive cannot be unpacked ({one_line(exc)})") from None
    return written


def _unpack_folder(root: Path, parts: list[str]) -> Path:
    """``root / parts``, made where missing; refused if any folder on the way below ``root`` is a symlink."""
    folder = root
    for part in parts:
        folder = folder / part
        if folder.is_symlink():
            raise UserError(f"refusing to unpack into {folder}: it is a symbolic link (remove it, or point "
                            "--data-dir / SELFDISTILL_DATA elsewhere)")
        folder.mkdir(exist_ok=True)
    return folder


def _update_manifest(folder: Path, files: list[Path]) -> None:
    """Record the SHA-256 of the downloaded files in ``folder``'s manifest, so that later loads verify them.

    The manifest is rewritten atomically (a symlink planted in its place is replaced, never followed),
    keeping the entries of an existing regular manifest.
    """
    manifest = folder / MANIFEST
    entries = read_manifest(manifest) if manifest.is_file() and not manifest.is_symlink() else {}
    entries.update({str(p.relative_to(folder)): sha256_of(p) for p in files if p.parent == folder})
    atomic_write_text(manifest, "".join(f"{digest}  {name}\n" for name, digest in entries.items()))
