"""``selfdistill report``: mean ± std over seeds of the finished runs under the given folders, and plots
(:mod:`selfdistill.analysis.report`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..analysis.report import build_report


def run(args: argparse.Namespace, argv: list[str]) -> int:
    first = Path(args.paths[0])
    out = Path(args.out) if args.out else (first if first.is_dir() else first.parent) / "report"
    print(build_report(args.paths, out, plots=not args.no_plots))
    return 0
