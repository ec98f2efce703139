"""``selfdistill demo``: cross-entropy and DLB side by side on the bundled Fashion-MNIST slice.

Both runs use the same model, recipe, seed and number of epochs (DLB forwards twice the images per
step, as in the paper); the demo prints a table and writes ``test_accuracy.png``.
"""

from __future__ import annotations

from pathlib import Path

from .config import resolve
from .engine import train
from .report import load_run, plot_test_accuracy

RECIPE = {
    "data": {"dataset": "fashion-mnist-mini", "batch_size": 64},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    "schedule": {"name": "cosine"},
}


def free_folder(base: str) -> Path:
    path, n = Path(base), 1
    while path.exists():
        n += 1
        path = Path(f"{base}-{n}")
    return path


def run_demo(out: str | None, epochs: int, model: str, seed: int) -> Path:
    folder = Path(out) if out else free_folder("selfdistill-demo")
    configs = {m: resolve([RECIPE, {"method": {"name": m}, "model": {"name": model},
                                     "train": {"epochs": epochs, "seed": seed}}]) for m in ("ce", "dlb")}
    print(f"selfdistill demo: CE and DLB, {model} on fashion-mnist-mini (6,000 train / 2,000 test images), "
          f"{epochs} epochs each -> {folder}", flush=True)
    runs = {}
    for name, config in configs.items():
        print(f"\n== {name} ==", flush=True)
        train(config, folder / name)
        runs[name] = load_run(folder / name)
    plot = folder / "test_accuracy.png"
    plot_test_accuracy({n.upper(): r for n, r in runs.items()}, plot,
                       f"{model} on fashion-mnist-mini, {epochs} epochs")
    lines = ["| method | top-1 % | NLL | ECE % | images/s | wall s |", "|---|---|---|---|---|---|"]
    for name, r in runs.items():
        lines.append(f"| {name} | {r['test_top1']:.2f} | {r['test_nll']:.3f} | {r['test_ece']:.2f} | "
                     f"{r['images_per_s']:,.0f} | {r['wall_s']:.0f} |")
    table = "\n".join(lines)
    (folder / "summary.md").write_text(table + "\n")
    print(f"\n{table}\n\nimages/s counts every image forwarded (DLB: new + replayed). Plot: {plot}")
    return folder
