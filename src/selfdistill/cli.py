"""Command line: ``selfdistill {train,demo,methods,models,datasets,report}``.

Bad input ends with exit code 2 and one line on stderr naming the field and what is allowed; a
diverged run ends with exit code 3 and keeps its last good checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import yaml

from . import __version__
from .config import Config, load_yaml, nested, parse_assignment, resolve
from .errors import TrainingDiverged, UserError

# flag -> dotted config key
TRAIN_FLAGS = {
    "method": "method.name", "dataset": "data.dataset", "model": "model.name", "epochs": "train.epochs",
    "seed": "train.seed", "batch_size": "data.batch_size", "lr": "optim.lr", "label_noise": "data.label_noise",
    "train_subset": "data.train_subset", "data_dir": "data.data_dir", "device": "train.device",
}


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> Parser:
    parser = Parser(prog="selfdistill", description="Knowledge distillation centred on self-distillation.")
    parser.add_argument("--version", action="version", version=f"selfdistill {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    train = sub.add_parser("train", help="train one method/model/dataset (flags or --config YAML)")
    train.add_argument("--method", help="ce, dlb, ... (see `selfdistill methods`); combine with +")
    train.add_argument("--dataset", help="see `selfdistill datasets`")
    train.add_argument("--model", help="see `selfdistill models`")
    train.add_argument("--epochs", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--out", help="run directory (default: runs/<method>-<dataset>-<model>-s<seed>-<time>)")
    train.add_argument("--batch-size", type=int, help="global batch size (split across torchrun processes)")
    train.add_argument("--lr", type=float)
    train.add_argument("--label-noise", type=float, help="symmetric label noise rate in [0, 1)")
    train.add_argument("--train-subset", type=int, help="train on a class-balanced subset of N images")
    train.add_argument("--data-dir", help="data root holding one folder per dataset")
    train.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    train.add_argument("--config", help="YAML recipe (a path, or a bundled name such as dlb_cifar100_resnet32)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config key, e.g. --set method.alpha=0.5 (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")

    demo = sub.add_parser("demo", help="CE vs DLB on the bundled Fashion-MNIST slice: table + accuracy plot")
    demo.add_argument("--out", help="output folder (default: selfdistill-demo, or -2, -3, ... if taken)")
    demo.add_argument("--epochs", type=int, default=8)
    demo.add_argument("--model", default="cnn")
    demo.add_argument("--seed", type=int, default=0)

    sub.add_parser("methods", help="list the methods, one line each")
    sub.add_parser("models", help="list the model names")
    sub.add_parser("datasets", help="list the datasets")
    report = sub.add_parser("report", help="mean ± std table of finished runs found under the given folders")
    report.add_argument("paths", nargs="+")
    return parser


def train_config(args: argparse.Namespace) -> tuple[Config, Path]:
    layers: list[dict[str, Any]] = []
    if args.resume:
        if not args.out:
            raise UserError("--resume needs --out, the run directory to continue")
        saved = Path(args.out) / "config.yaml"
        if not saved.is_file():
            raise UserError(f"--resume: nothing to resume in {args.out} (no config.yaml)")
        layers.append(yaml.safe_load(saved.read_text()))
    if args.config:
        layers.append(load_yaml(args.config))
    for flag, key in TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            layers.append(nested(key, value))
    layers += [parse_assignment(item) for item in args.set]
    config = resolve(layers)
    out = Path(args.out) if args.out else Path("runs") / (
        f"{config.method['name']}-{config.data.dataset}-{config.model.name}-s{config.train.seed}-"
        f"{time.strftime('%Y%m%d-%H%M%S')}")
    return config, out


def cmd_train(args: argparse.Namespace) -> None:
    from .engine import train

    config, out = train_config(args)
    if args.print_config:
        print(config.to_yaml(), end="")
        return
    metrics = train(config, out, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":
        print(f"done: test top-1 {metrics['test_top1']:.2f}%, NLL {metrics['test_nll']:.4f}, "
              f"ECE {metrics['test_ece']:.2f}% -> {out}")


def cmd_list(kind: str) -> None:
    if kind == "methods":
        from .methods import ALIASES, METHODS

        lines = {name: cls.summary for name, cls in METHODS.items()} | {k: v[1] for k, v in ALIASES.items()}
        width = max(map(len, lines))
        for name, summary in lines.items():
            print(f"{name:<{width}}  {summary}")
    elif kind == "models":
        from .models import model_names

        print("\n".join(model_names()))
    else:
        from .data import DATASETS

        width = max(map(len, DATASETS))
        for name, info in DATASETS.items():
            print(f"{name:<{width}}  {info.description}")


def cmd_report(args: argparse.Namespace) -> None:
    from .report import find_runs, markdown_table, summarize

    print(markdown_table(summarize(find_runs(args.paths))))


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "train":
            cmd_train(args)
        elif args.command == "demo":
            from .demo import run_demo

            run_demo(args.out, args.epochs, args.model, args.seed)
        elif args.command == "report":
            cmd_report(args)
        else:
            cmd_list(args.command)
        return 0
    except UserError as exc:
        print(f"selfdistill: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"selfdistill: training diverged: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("selfdistill: interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
