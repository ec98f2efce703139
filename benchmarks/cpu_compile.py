"""``train.compile`` on this machine: the steady-state training speed of a compiled student against the
same run eager, for each ``--models`` × ``--methods``. The KD teacher is a randomly initialised
``--teacher``; with ``train.compile`` it is compiled too, after its batch norms are folded.

Two trainers per case, identical but for ``train.compile``, alternate epoch by epoch on the same
in-memory subset. Round 0 warms up (and compiles) and is not counted. The figures are the medians of
``--repeats`` rounds, plus the warm-up epoch's extra seconds, which are mostly compilation. Layout,
threads and everything else are the engine's defaults.

    python benchmarks/cpu_compile.py --models cnn resnet20 --methods ce dlb kd --images 3000 --repeats 3
"""

from __future__ import annotations

import statistics

import torch
from timing import parse_timing_args, random_teacher, timing_data, timing_parser, timing_trainer


def time_case(method: str, model: str, args, data, teachers: list[dict]) -> tuple[float, float, float]:
    """(eager images/s, compiled images/s, extra seconds of the compiled warm-up epoch)."""
    trainers = {name: timing_trainer(args, data, method={"name": method}, model={"name": model}, teachers=teachers,
                                     train={"compile": name == "compiled"}) for name in ("eager", "compiled")}
    seconds: dict[str, list[float]] = {name: [] for name in trainers}
    for rep in range(args.repeats + 1):  # round 0 warms up and compiles
        for name, t in trainers.items():
            result = t.train_epoch(rep)
            seconds[name].append(result.seconds)
        print(f"{model} {method} round {rep}: eager {seconds['eager'][-1]:.2f} s, "
              f"compiled {seconds['compiled'][-1]:.2f} s", flush=True)
    e, c = (statistics.median(seconds[name][1:]) for name in trainers)
    return result.rows / e, result.rows / c, seconds["compiled"][0] - seconds["eager"][0]


def main() -> None:
    parser = timing_parser(__doc__)
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet20"])
    parser.add_argument("--methods", nargs="+", default=["ce", "dlb", "kd"])
    parser.add_argument("--teacher", default="resnet20", help="the KD teacher's architecture")
    args = parse_timing_args(parser)
    data = timing_data(args)
    rows = []
    with random_teacher(args.teacher, data) as teacher:
        for model in args.models:
            for method in args.methods:
                teachers = [teacher] if method == "kd" else []
                rows.append((model, method, *time_case(method, model, args, data, teachers)))
    print(f"\n{args.dataset}, {args.images} images/epoch, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; medians of {args.repeats} rounds")
    print(f"{'model':<10}{'method':<8}{'eager img/s':>12}{'compiled img/s':>16}{'speed-up':>10}{'compile s':>11}")
    for model, method, e, c, extra in rows:
        print(f"{model:<10}{method:<8}{e:>12,.0f}{c:>16,.0f}{c / e:>10.3f}{extra:>11.1f}")


if __name__ == "__main__":
    main()
