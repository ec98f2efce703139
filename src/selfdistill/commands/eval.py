"""``selfdistill eval``: top-1, top-5, NLL, ECE, per-class accuracy and a reliability diagram of a trained
network (:mod:`selfdistill.analysis.evaluation`)."""

from __future__ import annotations

import argparse

from ..analysis.eval_output import format_eval
from ..analysis.evaluation import evaluate_saved_model


def run(args: argparse.Namespace, argv: list[str]) -> int:
    result = evaluate_saved_model(args.target, dataset=args.dataset, data_dir=args.data_dir, split=args.split,
                                  model=args.model, batch_size=args.batch_size, device=args.device, out=args.out,
                                  teachers=args.teacher, role=args.role)
    print(format_eval(result))
    return 0
