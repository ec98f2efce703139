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
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

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
    for root in roots:
        found = _find_files(root / source.folder, source)
        if found is not None:
            verify(root, source.folder, found)
            return found
    searched = ", ".join(str(r / source.folder) for r in roots)
    hint = f"put {', '.join(source.files)} in one of: {searched} (or point --data-dir / SELFDISTILL_DATA at a root)"
    if not (download and source.downloads):
        why = "downloading is off" if source.downloads else "this dataset has no public download"
        raise UserError(f"dataset files not found ({why}); {hint}")
    target = roots[0] if data_dir else user_cache()
    fetch(source, target)
    found = _find_files(target / source.folder, source)
    if found is None:
        raise UserError(f"download into {target} did not produce the expected files; {hint}")
    verify(target, source.folder, found)
    return found


def _find_files(folder: Path, source: Source) -> dict[str, Path] | None:
    found = {}
    for name in source.files:
        candidates = [folder / name]
        if source.compressed_alternative:
            candidates.append(folder / (name[:-3] if name.endswith(".gz") else name + ".gz"))
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            return None
        found[name] = path
    return found


# ----------------------------------------------------------------------------- verification
def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: Path) -> dict[str, str]:
    """Parse a ``sha256sum``-style manifest into ``{relative path: hex digest}``."""
    entries = {}
    for line in path.read_text().splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2 and len(parts[0]) == 64:
            entries[parts[1].lstrip("*").strip()] = parts[0].lower()
    return entries


def verify(root: Path, folder: str, files: dict[str, Path]) -> None:
    """Check every file against the root's and the folder's manifests, where they list it."""
    manifests = [(root / MANIFEST, f"{folder}/"), (root / folder / MANIFEST, "")]
    for manifest, prefix in manifests:
        if not manifest.is_file():
            continue
        expected = read_manifest(manifest)
        for path in files.values():
            key = prefix + path.name
            if key in expected and sha256_of(path) != expected[key]:
                raise UserError(f"checksum mismatch for {path}: it does not match {manifest}; the file is corrupt "
                                "or was replaced (delete it to download again)")


# ----------------------------------------------------------------------------- download
def fetch(source: Source, root: Path) -> None:
    """Download, verify and unpack ``source`` into ``root / source.folder``."""
    folder = root / source.folder
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for item in source.downloads:
            _fetch_one(item, folder, root)
    except UserError:
        if created and not any(folder.iterdir()):
            folder.rmdir()  # leave no empty folder behind
        raise


def _fetch_one(item: Download, folder: Path, root: Path) -> None:
    """Download one file, check its SHA-256, then move or unpack it into place."""
    name = item.url.rsplit("/", 1)[-1]
    partial = folder / f".{name}.part"
    try:
        print(f"downloading {item.url} -> {folder}", flush=True)
        with urllib.request.urlopen(item.url, timeout=60) as response, partial.open("wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise UserError(f"could not download {item.url} ({reason}); put the files in {folder} instead, "
                        "or point --data-dir / SELFDISTILL_DATA at a folder that has them") from None
    actual = sha256_of(partial)
    if actual != item.sha256:
        partial.unlink()
        raise UserError(f"checksum mismatch for {item.url}: got sha256 {actual}, expected {item.sha256}; "
                        "nothing was kept")
    if item.unpack == "tar":
        written = _untar(partial, root)
        partial.unlink()
    else:
        final = folder / name
        os.replace(partial, final)
        written = [final]
    _append_manifest(folder, written)


def _untar(archive: Path, root: Path) -> list[Path]:
    """Unpack regular files only, refusing absolute paths and '..' (a verified archive, still checked)."""
    written = []
    with tarfile.open(archive, "r:*") as tar:
        for member in tar.getmembers():
            target = (root / member.name).resolve()
            if not member.isfile() or root.resolve() not in target.parents:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, target.open("wb") as dst:  # type: ignore[union-attr]
                shutil.copyfileobj(src, dst)
            written.append(target)
    return written


def _append_manifest(folder: Path, files: list[Path]) -> None:
    lines = [f"{sha256_of(p)}  {p.relative_to(folder)}" for p in files if p.parent == folder]
    with (folder / MANIFEST).open("a") as handle:
        handle.write("".join(line + "\n" for line in lines))

