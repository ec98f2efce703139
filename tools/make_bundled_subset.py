"""Rebuild the bundled ``fashion-mnist-mini`` dataset from the full Fashion-MNIST IDX files.

    python tools/make_bundled_subset.py /path/to/data-root/fashion-mnist

Takes the first 600 training and the first 200 test images of every class, in file order, and writes
them as gzip IDX files (with a fixed gzip timestamp, so the output is byte-for-byte reproducible)
plus a SHA256SUMS manifest into src/selfdistill/data/bundled/fashion-mnist-mini/.
"""

import sys
from pathlib import Path

import torch

from selfdistill.data.idx import read_idx, write_idx
from selfdistill.data.sources import sha256_of

PER_CLASS = {"train": 600, "t10k": 200}


def first_per_class(labels: torch.Tensor, count: int) -> torch.Tensor:
    keep = torch.cat([torch.nonzero(labels == c).flatten()[:count] for c in range(10)])
    return keep.sort().values


def main(source: Path) -> None:
    out = Path(__file__).resolve().parents[1] / "src/selfdistill/data/bundled/fashion-mnist-mini"
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for split, count in PER_CLASS.items():
        images = read_idx(next(source.glob(f"{split}-images-idx3-ubyte*")))
        labels = read_idx(next(source.glob(f"{split}-labels-idx1-ubyte*")))
        keep = first_per_class(labels, count)
        for kind, array in (("images-idx3", images[keep]), ("labels-idx1", labels[keep])):
            name = f"{split}-{kind}-ubyte.gz"
            write_idx(out / name, array)
            names.append(name)
    (out / "SHA256SUMS").write_text("".join(f"{sha256_of(out / n)}  {n}\n" for n in names))
    print(f"wrote {len(names)} files to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
