"""GPU training throughput, item 2 of ``shared/gpu-checklist.md``: train-only images/s of the engine
beside a bare PyTorch loop on the same model, data, batch, layout, autocast and compilation, timed in
the same process (:func:`selfdistill.commands.bench.run_bench`: one warm-up round, then the median of
``--repeats`` rounds; compilation and evaluation are outside the training figure), with the peak GPU
memory of each case.

Cases, in the order they run (the most wanted first, so that ``--deadline-s`` cuts the least wanted):

1. CE and DLB on the first of ``--models`` at every ``--batches`` in fp32, bf16 autocast, and bf16 +
   channels_last; then at ``--recipe-batch`` (the GPU recipe's batch, to plan the paper-regime runs);
2. the same precision variants on the other models;
3. KD (a randomly initialised frozen teacher: ResNet50 for resnet18, resnet56 otherwise) and a
   2-network DML in bf16 + channels_last at the largest batch;
4. CE and DLB in bf16 + channels_last + ``torch.compile`` at the largest batch (compilation is slow);
5. KD and DML at the other batches.

The data is Fashion-MNIST zero-padded to 32×32 with the recipe's crop augmentation, on the device.
Images/s counts every forwarded row (DLB forwards its replayed half too): ``rows/step`` says how many.
Writes one JSON line per case to ``--out`` and prints a table at the end. Run by
``benchmarks/gpu_checklist.sh``; on a CPU it runs too (small ``--steps``), which is how it is tested.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from selfdistill.commands.bench import run_bench
from selfdistill.engine import resolve
from selfdistill.models import build_model

VARIANTS = {
    "fp32": {"amp": False, "channels_last": False, "compile": False},
    "bf16": {"amp": True, "channels_last": False, "compile": False},
    "bf16+cl": {"amp": True, "channels_last": True, "compile": False},
    "bf16+cl+compile": {"amp": True, "channels_last": True, "compile": True},
}
TEACHER = {"resnet18": "ResNet50"}  # otherwise resnet56


def cases(models: list[str], batches: list[int], recipe_batch: int) -> list[tuple[str, str, int, str]]:
    """(method, model, batch, variant) in the order they run: the first model's precision variants and
    recipe batch, the other models' variants, KD and DML at the largest batch, compiled CE and DLB, and
    last KD and DML at the other batches."""
    big, first = max(batches), models[0]

    def variants(model: str) -> list[tuple[str, str, int, str]]:
        return [(m, model, b, v) for b in batches for m in ("ce", "dlb") for v in ("fp32", "bf16", "bf16+cl")]

    out = variants(first) + [(m, first, recipe_batch, "bf16+cl") for m in ("ce", "dlb") if recipe_batch not in batches]
    out += [case for model in models[1:] for case in variants(model)]
    out += [(m, model, big, "bf16+cl") for model in models for m in ("kd", "dml")]
    out += [(m, model, big, "bf16+cl+compile") for model in models for m in ("ce", "dlb")]
    out += [(m, model, b, "bf16+cl") for model in models for b in batches if b != big for m in ("kd", "dml")]
    return out


def teacher_file(model: str, folder: Path, channels: int) -> dict[str, str]:
    """A randomly initialised teacher's weights, saved once per architecture: speed needs no training."""
    arch = TEACHER.get(model, "resnet56")
    path = folder / f"{arch}.pt"
    if not path.exists():
        torch.save(build_model(arch, 10, channels, 32).state_dict(), path)
    return {"path": str(path), "model": arch}


def one_case(method: str, model: str, batch: int, variant: str, args: argparse.Namespace,
             folder: Path) -> dict[str, Any]:
    layers: list[dict[str, Any]] = [{
        "method": {"name": method},
        "model": {"name": model},
        "data": {"dataset": args.dataset, "batch_size": batch, "pad_to": 32, "eval_batch_size": 512,
                 "augment": {"crop_padding": 4}},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        "train": {"epochs": 1, "device": args.device, **VARIANTS[variant]},
    }]
    if method == "kd":
        layers.append({"teachers": [teacher_file(model, folder, 1)]})
    config = resolve(layers)
    on_cuda = torch.cuda.is_available() and args.device != "cpu"
    if on_cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = run_bench(config, args.steps, args.repeats)
    result["seconds"] = time.perf_counter() - start
    result["variant"] = variant
    result["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20 if on_cuda else None
    return result


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'method':<7}{'model':<10}{'batch':>6}  {'variant':<16}{'rows/step':>10}{'engine':>10}{'bare':>10}"
             f"{'eng/bare':>9}{'peak MiB':>10}{'case s':>8}"]
    for r in rows:
        peak = "-" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:,.0f}"
        lines.append(f"{r['method']:<7}{r['model']:<10}{r['batch_size']:>6}  {r['variant']:<16}"
                     f"{r['rows_per_step']:>10.0f}{r['train_images_per_s']:>10,.0f}{r['bare_images_per_s']:>10,.0f}"
                     f"{r['engine_over_bare']:>9.3f}{peak:>10}{r['seconds']:>8.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet18,resnet20")
    parser.add_argument("--batches", default="128,256")
    parser.add_argument("--recipe-batch", type=int, default=64)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--deadline-s", type=float, default=1e9, help="start no case after this many seconds")
    parser.add_argument("--only", default=None, help="comma-separated case numbers (1-based) to run, for reruns")
    parser.add_argument("--out", default="gpu_throughput.jsonl")
    args = parser.parse_args()
    todo = cases(args.models.split(","), [int(b) for b in args.batches.split(",")], args.recipe_batch)
    if args.only:
        todo = [todo[int(k) - 1] for k in args.only.split(",")]
    start, rows = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as tmp, open(args.out, "a") as out:
        for k, (method, model, batch, variant) in enumerate(todo, 1):
            if time.perf_counter() - start > args.deadline_s:
                print(f"deadline: {len(todo) - k + 1} case(s) not run, from #{k} ({method} {model} {batch} {variant})",
                      flush=True)
                break
            try:
                r = one_case(method, model, batch, variant, args, Path(tmp))
            except Exception as e:  # one failing case must not cost the others: report it and go on
                print(f"#{k} {method} {model} {batch} {variant}: FAILED {type(e).__name__}: {e}", flush=True)
                out.write(json.dumps({"case": k, "method": method, "model": model, "batch_size": batch,
                                      "variant": variant, "error": f"{type(e).__name__}: {e}"}) + "\n")
                continue
            r["case"] = k
            rows.append(r)
            out.write(json.dumps(r) + "\n")
            out.flush()
            print(f"#{k} {method} {model} {batch} {variant}: engine {r['train_images_per_s']:,.0f}, bare "
                  f"{r['bare_images_per_s']:,.0f} images/s ({r['seconds']:.0f} s)", flush=True)
    if rows:
        first = rows[0]
        print(f"\n{first['device_name']}, torch {first['torch']}; medians of {args.repeats} rounds of {args.steps} "
              "steps after a warm-up round; images/s of forwarded rows")
        print(table(rows))


if __name__ == "__main__":
    main()
