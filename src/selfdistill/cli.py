"""Command line: ``selfdistill {train,demo,eval,bench,report,recipes,methods,models,datasets}``.

This module parses and dispatches only: each command is ``run(args, argv)`` of its module in
:mod:`selfdistill.commands`, imported after parsing (most of them import torch, which ``--help`` and
one-line errors should not wait for).

Every failure ends with one line on stderr and an exit code (see :mod:`selfdistill.errors`): 2 for
bad input (nothing started or written), 3 for a diverged run, 4 for a failed write to the run
directory, 5 for a failed process of a distributed run, 130 for Ctrl-C, 143 for SIGTERM and 129 for SIGHUP
(128 + the signal's number, as a shell reports a program the signal stops; each stops a command as Ctrl-C
does, saying what was kept). Under ``torchrun`` (or
``--nproc``) only rank 0 prints, except for the rank that notices a peer has stopped. A command whose
stdout is closed before it has printed everything (``selfdistill recipes | head -1``) stops quietly with
141, as a shell reports any program that a closed pipe stops.
"""

from __future__ import annotations

from .interrupts import as_exception, signals_held, stop_code, stop_signals_raise, stopped_line

# A Ctrl-C, SIGTERM or SIGHUP while this module loads (the first moments of `selfdistill ...`) is held back and
# acted on by main(), as one that comes later is: one line and its exit code, not a traceback from an import.
with signals_held() as _HELD_WHILE_LOADING:
    import argparse
    import contextlib
    import importlib
    import os
    import re
    import sys
    import time
    from typing import Any, NoReturn

    from . import __version__
    from .commands.flags import BENCH_FLAGS, TRAIN_FLAGS
    from .config import Config
    from .cpus import prefer_passive_wait
    from .errors import PeerFailure, SelfdistillError, TrainingDiverged, UserError, did_you_mean, printable_line

DEFAULTS = Config()
PIPE_CLOSED = 141  # 128 + SIGPIPE: the shell's code for a program stopped by writing into a closed pipe
NON_MAIN_GRACE_S = 5.0  # a failing rank other than 0 waits this long, so that rank 0's line is the one shown
_ARGV: list[str] = []  # the arguments being parsed, for hints in argparse's errors


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one ``UserError`` line with a hint, instead of usage text and exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message}{_hint(message)} (see `{self.prog} --help`)")


def _hint(message: str) -> str:
    """A "did you mean" for a mistyped command or flag; the KEY=VALUE form for ``--set key value``."""
    choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        return did_you_mean(choice.group(1), re.findall(r"'?([\w-]+)'?", choice.group(2)))
    extra = re.match(r"unrecognized arguments: (.*)", message)
    if not extra:
        return ""
    first = extra.group(1).split()[0]
    for flag, value, following in zip(_ARGV, _ARGV[1:], _ARGV[2:]):
        if flag == "--set" and "=" not in value and following == first:
            return f"; --set takes KEY=VALUE as one word: --set {value}={first}"
    if first.startswith("--"):
        flags = [f for a in _ARGV if a in ("train", "demo", "eval", "bench", "report") for f in _flags(a)]
        return did_you_mean(first, flags)
    return ""


def _flags(command: str) -> list[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [s for action in sub.choices[command]._actions for s in action.option_strings]


def _default(key: str) -> Any:
    value: Any = DEFAULTS.to_dict()
    for part in key.split("."):
        value = value[part]
    return value


def _threads(text: str) -> int | str:
    """``--threads``: a count, or ``auto``."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of threads or auto") from None


def build_parser() -> Parser:
    parser = Parser(prog="selfdistill", description="Knowledge distillation centred on self-distillation.")
    parser.add_argument("--version", action="version", version=f"selfdistill {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")

    train = sub.add_parser("train", help="train one method/model/dataset (flags or --config YAML)",
                           description="Train one run. Layers, each overriding the one before: defaults, --config, "
                                       "the flags, --set. Exit codes: 0 done, 2 bad input, 3 diverged, 4 cannot "
                                       "write --out, 5 distributed process failed, 130 interrupted (Ctrl-C), 143 "
                                       "SIGTERM, 129 SIGHUP.")
    train.add_argument("--method", help="ce, dlb, ... (`selfdistill methods`); combine with +, e.g. dlb+dsr "
                                        f"(default: {_default('method.name')})")
    train.add_argument("--dataset", help=f"`selfdistill datasets` (default: {_default('data.dataset')})")
    train.add_argument("--model", help="`selfdistill models`, or package.module:function for your own nn.Module "
                                       "factory (imported); its options: --set model.options.KEY=VALUE "
                                       f"(default: {_default('model.name')})")
    train.add_argument("--teacher", action="append", metavar="RUN|PATH:ARCH",
                       help="a frozen teacher: a finished run directory, an online run's ROLE.pt (e.g. "
                            "runs/x/peer1.pt), or a weights file with its architecture (model.pt, checkpoint.pt, or a "
                            "RepDistiller/mdistiller ckpt_epoch_240.pth); repeat for several (default: none)")
    train.add_argument("--epochs", type=int, help=f"(default: {_default('train.epochs')})")
    train.add_argument("--seed", type=int, help=f"seeds data order, augmentation, init, subset, noise "
                                                f"(default: {_default('train.seed')})")
    train.add_argument("--out", help="run directory (default: runs/<method>-<dataset>-<model>-s<seed>-<time>)")
    train.add_argument("--batch-size", type=int, help="global batch size, split across processes "
                                                      f"(default: {_default('data.batch_size')})")
    train.add_argument("--lr", type=float, help=f"peak learning rate (default: {_default('optim.lr')}; schedule "
                                                f"{_default('schedule.name')} unless a recipe says otherwise)")
    train.add_argument("--label-noise", type=float, help="symmetric label noise rate in [0, 1) (default: 0)")
    train.add_argument("--train-subset", type=int, help="train on a class-balanced subset of N images "
                                                        "(default: the whole training set)")
    train.add_argument("--data-dir", help="data root holding one folder per dataset (default: $SELFDISTILL_DATA, "
                                          "then ~/.cache/selfdistill)")
    train.add_argument("--device", help="auto, cpu, cuda, cuda:N (default: auto = cuda if available)")
    train.add_argument("--threads", type=_threads, help="CPU threads for torch, or auto (default: auto = the CPUs "
                                                        "this process may use, shared among --nproc processes)")
    train.add_argument("--config", help="YAML file, or the name of a bundled recipe (`selfdistill recipes`, e.g. "
                                        "dlb_cifar100) (default: none)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config key, e.g. --set method.alpha=0.5 (repeatable; values are YAML) "
                            "(default: none)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its last checkpoint, rebuild missing or damaged final "
                            "outputs, or extend a finished run with a larger --epochs (multistep/constant schedules) "
                            "(default: off)")
    train.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="train in N processes on this machine, like torchrun --standalone (default: 1)")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit (default: off)")

    demo = sub.add_parser("demo", help="CE vs DLB on the bundled Fashion-MNIST slice: table and plots")
    demo.add_argument("--out", help="output folder (default: selfdistill-demo, or -2, -3, ... if taken)")
    demo.add_argument("--epochs", type=int, default=8, help="epochs per method (default: 8)")
    demo.add_argument("--model", default="cnn", help="(default: cnn)")
    demo.add_argument("--seed", type=int, default=0, help="(default: 0)")
    demo.add_argument("--threads", type=_threads, default="auto",
                      help="CPU threads for torch, or auto (default: auto = the CPUs this process may use)")

    ev = sub.add_parser("eval", help="top-1, top-5, NLL, ECE, per-class accuracy and a reliability diagram of a "
                                     "trained model",
                        description="Evaluate a run's student (model.pt), another network of an online run (--role), "
                                    "or a weights file. The output names the run's other networks, if any.")
    ev.add_argument("target", help="a run directory or a model.pt (with its model.json beside it); also an online "
                                   "run's ROLE.pt, e.g. peer1.pt")
    ev.add_argument("--role", help="with a run directory: which of its trainable networks to evaluate, e.g. peer1, "
                                   "teacher, branch (its ROLE.pt and ROLE.json); results go to "
                                   "eval-ROLE-<dataset>-<split>/ (default: student, model.pt)")
    ev.add_argument("--dataset", help="dataset to evaluate on (default: the one the model was trained on)")
    ev.add_argument("--data-dir", help="data root (default: $SELFDISTILL_DATA, then ~/.cache/selfdistill)")
    ev.add_argument("--split", choices=("test", "train"), default="test", help="(default: test)")
    ev.add_argument("--model", help="architecture, for a model.pt without model.json (default: from model.json)")
    ev.add_argument("--teacher", action="append", metavar="RUN|PATH:ARCH",
                    help="also measure agreement and predictive KL with this teacher (as train's --teacher: a run "
                         "directory, an online run's ROLE.pt, or PATH:ARCH; repeat for an ensemble) and its own "
                         "top-1, NLL, ECE and entropies (default: none)")
    ev.add_argument("--batch-size", type=int, default=256, help="(default: 256)")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    ev.add_argument("--out", help="folder for eval.json, per_class.csv, reliability.png "
                                  "(default: eval-<dataset>-<split>/ beside the model)")

    bench = sub.add_parser("bench", help="training and evaluation images/s of a method/model/batch on this machine, "
                                         "beside a bare PyTorch loop",
                           description="Time the trainer `train` would build from the same flags (nothing is "
                                       "written): its training step, a bare PyTorch loop on the same model, data, "
                                       "optimiser and layout (forwarding the same frozen teachers), and its "
                                       "evaluation, alternating in one process; medians after a warm-up round. Exit "
                                       "codes: 0 done, 2 bad input.")
    for action in train._actions:  # the same flag objects as train's, as argparse's `parents` shares them
        if action.dest in BENCH_FLAGS:
            bench._add_action(action)
    bench.add_argument("--steps", type=int, default=30, help="training steps per round (default: 30)")
    bench.add_argument("--repeats", type=int, default=5, help="rounds counted, after one warm-up round (default: 5)")
    bench.add_argument("--json", action="store_true", help="print the result as JSON (default: a table)")
    bench.set_defaults(out=None, resume=False, **{f: None for f in TRAIN_FLAGS if f not in BENCH_FLAGS})

    sub.add_parser("recipes", help="list the bundled recipes and what each reproduces")
    sub.add_parser("methods", help="list the methods, one line each")
    sub.add_parser("models", help="list the model names")
    sub.add_parser("datasets", help="list the datasets")
    report = sub.add_parser("report", help="mean ± std table and plots of the finished runs under the given folders")
    report.add_argument("paths", nargs="+", help="run directories, or folders holding them")
    report.add_argument("--out", help="folder for report.md, accuracy.png, reliability.png "
                                      "(default: report/ inside the first path)")
    report.add_argument("--no-plots", action="store_true", help="write the table only (default: off)")
    return parser


# ----------------------------------------------------------------------------- entry point
LABELS = {UserError: "error", TrainingDiverged: "training diverged", PeerFailure: "distributed run failed"}


def _rank() -> int:
    from .distributed import launched_rank

    return launched_rank()


def _say_failure(exc: SelfdistillError) -> int:
    """Print ``exc`` as one line (rank 0; other ranks only for a stopped peer) and return its exit code."""
    rank = _rank()
    if rank != 0:
        try:
            time.sleep(NON_MAIN_GRACE_S)  # let rank 0 speak first; the launcher stops this process meanwhile
        except KeyboardInterrupt:
            return exc.exit_code
        if not isinstance(exc, PeerFailure):
            return exc.exit_code
    label = next((text for cls, text in LABELS.items() if isinstance(exc, cls)), "")
    message = str(exc) if not label else f"{label}: {exc}"
    print(f"selfdistill: {printable_line(message)}", file=sys.stderr, flush=True)  # quoted input stays on one line
    return exc.exit_code


# the module that runs each command (imported once the arguments parse; torch, for most)
COMMAND_MODULES = {"train": "train", "demo": "demo", "eval": "eval", "report": "report", "bench": "bench",
                   "recipes": "recipes", "methods": "listings", "models": "listings", "datasets": "listings"}


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` names (default: ``sys.argv``) and return its exit code. SIGTERM and SIGHUP
    stop it as Ctrl-C does (see :mod:`selfdistill.interrupts`)."""
    try:
        try:
            with stop_signals_raise():
                code = _run(argv)
        except SystemExit:  # --help and --version, which argparse has printed
            sys.stdout.flush()
            raise
        sys.stdout.flush()  # here, where a closed pipe is caught, rather than at exit, where it ends in a traceback
        return code
    except BrokenPipeError:
        return _reader_gone()


def _reader_gone() -> int:
    """Stdout's reader has gone (``selfdistill models | head -1``): stop without a word, as a program that the
    pipe's SIGPIPE stops, and with its exit code. Python ignores SIGPIPE, so the write raised instead; what
    is still buffered goes to /dev/null, or the interpreter's last flush would fail again with a traceback."""
    with contextlib.suppress(OSError, ValueError):  # ValueError: a stdout without a file descriptor (tests)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return PIPE_CLOSED


def _run(argv: list[str] | None) -> int:
    global _ARGV
    argv = list(sys.argv[1:] if argv is None else argv)
    _ARGV = argv
    try:
        if _HELD_WHILE_LOADING:
            raise as_exception(_HELD_WHILE_LOADING.pop(0))
        with signals_held() as held:  # modules load (torch, for most commands): see cli's own imports above
            args = build_parser().parse_args(argv)
            prefer_passive_wait()  # before torch loads OpenMP; see selfdistill/cpus.py
            command = importlib.import_module(f"selfdistill.commands.{COMMAND_MODULES[args.command]}")
        if held:
            raise as_exception(held[0])
        return command.run(args, argv)
    except SelfdistillError as exc:
        return _say_failure(exc)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (Stopped), outside a training run
        if _rank() == 0:
            with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
                print(stopped_line(exc, _ARGV), file=sys.stderr)
        return stop_code(exc)


if __name__ == "__main__":
    sys.exit(main())
