"""Side by side with torchdistill 1.1.5: the same CE and KD jobs, epoch times and final accuracy.

The job: a student (``--student``, the small ``cnn``) trained from the same initial weights on the same
in-memory Fashion-MNIST subset (1 channel, 28x28), batch 64, SGD + Nesterov (lr 0.05, momentum 0.9,
weight decay 5e-4), cosine to 0 stepped every step, random crop (2-pixel padding) + horizontal flip,
``--epochs`` epochs; the KD job adds a frozen teacher (``--teacher``, resnet20, trained once here by
``selfdistill train`` and cached) with Hinton's loss at T = 4, 0.1 CE + 0.9 T^2 KL (batchmean):
selfdistill's ``kd`` defaults, torchdistill's ``KDLoss(temperature=4, alpha=0.1)``. The networks are
selfdistill's modules on both sides (``selfdistill.models.build_model``), so the architectures and weights
are identical by construction; torchdistill's own CIFAR ResNets take 3-channel 32x32 images.

Each side as its users run it:

* selfdistill: :class:`~selfdistill.engine.Trainer` with ``--method ce`` / ``kd --teacher RUN``; data and
  augmentation batched in memory; an epoch is ``Trainer.train_epoch`` (its own clock: the training loop).
* torchdistill: its ``TrainingBox`` (CE: ``WeightedSumLoss`` over ``CrossEntropyLoss`` in a
  ``SimpleLossWrapper``) and ``DistillationBox`` (``KDLoss``, teacher ``requires_grad: False``) built from
  the dict its YAML configs become, a ``DataLoader`` (``num_workers = --workers``, 0 by default: the
  2 cores go to the compute) over a dataset that applies torchvision's per-image transforms (``RandomCrop``,
  ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``) to the same uint8 images, as
  ``torchvision.datasets.FashionMNIST`` does, and the loop of its example script
  (``pre_epoch_process``; per batch ``forward_process`` and ``post_forward_process``;
  ``post_epoch_process``). An epoch is timed from the first batch drawn to the last step, so its data
  loading and augmentation count, as selfdistill's do. torchdistill never sets the teacher's mode (its
  example leaves a freshly built teacher in train mode, so BatchNorm would use batch statistics); we call
  ``teacher.eval()`` so that both students learn from the same teacher outputs.

Both sides run in ONE process of the torchdistill virtual environment (``--venv``, created on first use
with ``pip install torchdistill==1.1.5 torch==2.14.1 torchvision==0.29.1``, several GB of wheels; never
in CI), so they share the torch build (selfdistill declares torch < 2.14 but runs on 2.14.1 here; the
project's own timings use its 2.13 CPU wheel, so compare the two columns, not these with other tables),
and alternate epoch by epoch (who goes first alternates too) at
each ``--threads`` count. The process prints one JSON line per job; this script tabulates the median
epoch time (the first epoch, a warm-up, left out when there are more) and the final test top-1 (the same
evaluation code for both students). One run per setting: accuracy differences under a few tenths of a
point are seed noise. Target: selfdistill's KD epoch at most half of torchdistill's, equal accuracy.

    python benchmarks/torchdistill_side_by_side.py --train-subset 10000 --epochs 5 --threads 1 2
    python benchmarks/torchdistill_side_by_side.py --dry-run      # the plan; installs and trains nothing
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PINS = ("torchdistill==1.1.5", "torch==2.14.1", "torchvision==0.29.1")
KD = {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--student", default="cnn")
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--train-subset", type=int, default=10000, help="training images (0: all)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--jobs", nargs="+", choices=("ce", "kd"), default=["ce", "kd"])
    parser.add_argument("--workers", type=int, default=0, help="torchdistill DataLoader num_workers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--venv", default=str(ROOT / "benchmarks" / ".venv-torchdistill"))
    parser.add_argument("--out", default="bench-out/torchdistill")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; install and train nothing")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one job (inside the venv)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- the driver
def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def install_commands(venv: Path) -> list[list[str]]:
    return [[sys.executable, "-m", "venv", str(venv)],
            [str(venv_python(venv)), "-m", "pip", "install", "pyyaml", "tqdm", "matplotlib", *PINS]]


def teacher_command(args: argparse.Namespace, folder: Path) -> list[str]:
    cmd = [sys.executable, "-m", "selfdistill", "train", "--method", "ce", "--model", args.teacher,
           "--dataset", args.dataset, "--epochs", str(args.teacher_epochs), "--seed", str(args.seed),
           "--batch-size", str(args.batch_size), "--out", str(folder), "--set", "schedule.name=cosine",
           "--set", "train.progress=false", "--set", f"train.eval_every={args.teacher_epochs}"]
    return cmd + (["--train-subset", str(args.train_subset)] if args.train_subset else [])


def job_spec(args: argparse.Namespace, job: str, threads: int, teacher: Path) -> dict:
    return {"job": job, "threads": threads, "student": args.student, "teacher": args.teacher,
            "teacher_run": str(teacher), "dataset": args.dataset, "train_subset": args.train_subset or None,
            "epochs": args.epochs, "batch_size": args.batch_size, "workers": args.workers, "seed": args.seed}


def table(results: list[dict]) -> str:
    head = ("| job | threads | selfdistill s/epoch | torchdistill s/epoch | selfdistill / torchdistill | "
            "selfdistill top-1 % | torchdistill top-1 % |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        s, t = median_epoch(r["selfdistill"]["epoch_s"]), median_epoch(r["torchdistill"]["epoch_s"])
        lines.append(f"| {r['job']} | {r['threads']} | {s:.2f} | {t:.2f} | **{s / t:.2f}** | "
                     f"{r['selfdistill']['top1']:.2f} | {r['torchdistill']['top1']:.2f} |")
    return "\n".join(lines)


def median_epoch(seconds: list[float]) -> float:
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def drive(args: argparse.Namespace) -> None:
    venv, out = Path(args.venv), Path(args.out)
    teacher = out / (f"teacher-{args.teacher}-{args.dataset}-n{args.train_subset or 'all'}-e{args.teacher_epochs}"
                     f"-s{args.seed}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    specs = [job_spec(args, job, t, teacher) for t in args.threads for job in args.jobs]
    if args.dry_run:
        if not venv_python(venv).is_file():
            for cmd in install_commands(venv):
                print("would run:", " ".join(cmd))
        if "kd" in args.jobs and not (teacher / "metrics.json").is_file():
            print("would run:", " ".join(teacher_command(args, teacher)))
        for spec in specs:
            print("would run:", venv_python(venv), Path(__file__).name, "--worker", json.dumps(spec))
        return
    if not venv_python(venv).is_file():
        for cmd in install_commands(venv):
            subprocess.run(cmd, check=True)
    if "kd" in args.jobs and not (teacher / "metrics.json").is_file():
        subprocess.run(teacher_command(args, teacher), check=True, env=env)
    results = []
    for spec in specs:
        done = subprocess.run([str(venv_python(venv)), str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                              env=env, stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the {spec['job']} job at {spec['threads']} thread(s) failed (exit {done.returncode})")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    summary = table(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "side_by_side.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "side_by_side.md").write_text(summary + "\n")
    print(summary)


# ----------------------------------------------------------------------------- one job, inside the venv
def top1(model, images, labels, mean, std) -> float:
    """Test top-1 of ``model`` on uint8 images, normalised, no augmentation (the same code for both)."""
    import torch

    model.eval()
    correct = 0
    with torch.inference_mode():
        for x, y in zip(images.split(500), labels.split(500)):
            x = (x.float() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
            correct += int((model(x).argmax(1) == y).sum())
    return 100.0 * correct / len(labels)


def torchdistill_box(spec: dict, data, student, teacher):
    """torchdistill's training or distillation box, configured as its YAML files would configure it."""
    import torch
    from PIL import Image
    from torchdistill.core.distillation import get_distillation_box
    from torchdistill.core.training import get_training_box
    from torchvision import transforms

    class InMemoryImages(torch.utils.data.Dataset):
        """torchvision's FashionMNIST over tensors we already hold: PIL image, then the transform."""

        def __init__(self, images, labels, transform) -> None:
            self.images, self.labels, self.transform = images, labels, transform

        def __len__(self) -> int:
            return len(self.labels)

        def __getitem__(self, i):
            return self.transform(Image.fromarray(self.images[i, 0].numpy(), mode="L")), int(self.labels[i])

    pad = data.augment.crop_padding
    transform = transforms.Compose([transforms.RandomCrop(data.image_size, padding=pad),
                                    transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                    transforms.Normalize(data.mean, data.std)])
    dataset = {"train": InMemoryImages(data.train_images, data.train_labels, transform)}
    steps = -(-len(data.train_labels) // spec["batch_size"])
    config = {
        "num_epochs": spec["epochs"],
        "train_data_loader": {"dataset_id": "train", "sampler": {"class_or_func": torch.utils.data.RandomSampler,
                                                                 "kwargs": {}},
                              "kwargs": {"batch_size": spec["batch_size"], "num_workers": spec["workers"],
                                         "drop_last": False}},
        "optimizer": {"key": "SGD", "kwargs": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}},
        "scheduler": {"key": "CosineAnnealingLR", "kwargs": {"T_max": steps * spec["epochs"]}, "scheduling_step": 1},
    }
    cpu = torch.device("cpu")
    if teacher is None:
        config["model"] = {"forward_proc": "forward_batch_only"}
        config["criterion"] = {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"ce": {
            "criterion": {"key": "CrossEntropyLoss", "kwargs": {"reduction": "mean"}},
            "criterion_wrapper": {"key": "SimpleLossWrapper", "kwargs": {
                "input": {"is_from_teacher": False, "module_path": ".", "io": "output"},
                "target": {"uses_label": True}}},
            "weight": 1.0}}}}
        return get_training_box(student, dataset, config, cpu, None, False, 1)
    config["teacher"] = {"forward_proc": "forward_batch_only", "requires_grad": False}
    config["student"] = {"forward_proc": "forward_batch_only", "requires_grad": True}
    config["criterion"] = {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": {
        "criterion": {"key": "KDLoss", "kwargs": {
            "student_module_path": ".", "student_module_io": "output", "teacher_module_path": ".",
            "teacher_module_io": "output", "temperature": KD["temperature"], "alpha": KD["ce_weight"],
            "beta": KD["kd_weight"], "reduction": "batchmean"}},
        "weight": 1.0}}}}
    return get_distillation_box(teacher, student, dataset, config, cpu, None, False, 1)


def torchdistill_epoch(box, epoch: int) -> float:
    """One epoch as torchdistill's example script runs it; seconds of its data loading and steps."""
    box.pre_epoch_process(epoch=epoch)
    start = time.perf_counter()
    for sample_batch, targets, supp_dict in box.train_data_loader:
        loss = box.forward_process(sample_batch, targets, supp_dict)
        box.post_forward_process(loss=loss)
    seconds = time.perf_counter() - start
    box.post_epoch_process()
    return seconds


def work(spec: dict) -> dict:
    import torch
    import torchdistill

    from selfdistill.data import load_dataset
    from selfdistill.engine import Trainer, resolve
    from selfdistill.models import build_model

    torch.set_num_threads(spec["threads"])
    kd = spec["job"] == "kd"
    config = resolve([{"method": {"name": "kd", **KD} if kd else {"name": "ce"}, "model": {"name": spec["student"]},
                       "teachers": [spec["teacher_run"]] if kd else [],
                       "data": {"dataset": spec["dataset"], "batch_size": spec["batch_size"],
                                "train_subset": spec["train_subset"]},
                       "schedule": {"name": "cosine"},
                       "train": {"epochs": spec["epochs"], "seed": spec["seed"], "threads": spec["threads"],
                                 "device": "cpu", "progress": False, "status_every": 0}}])
    data = load_dataset(config.data, spec["seed"])
    trainer = Trainer(config, dataset=data)
    student = build_model(spec["student"], data.num_classes, data.in_channels, data.image_size)
    student.load_state_dict(trainer.model.state_dict())  # the same initial weights on both sides
    teacher = None
    if kd:
        teacher = build_model(spec["teacher"], data.num_classes, data.in_channels, data.image_size)
        teacher.load_state_dict(torch.load(Path(spec["teacher_run"]) / "model.pt", weights_only=True))
        teacher.eval()  # torchdistill leaves this to its user
    torch.manual_seed(spec["seed"])
    box = torchdistill_box(spec, data, student, teacher)
    times: dict[str, list[float]] = {"selfdistill": [], "torchdistill": []}
    for epoch in range(spec["epochs"]):
        for side in ("selfdistill", "torchdistill")[::1 if epoch % 2 == 0 else -1]:
            seconds = trainer.train_epoch(epoch).seconds if side == "selfdistill" else torchdistill_epoch(box, epoch)
            times[side].append(seconds)
            print(f"{spec['job']} {spec['threads']} thread(s), epoch {epoch + 1}: {side} {seconds:.2f} s",
                  file=sys.stderr, flush=True)
    test = (data.test_images, data.test_labels, data.mean, data.std)
    return {"job": spec["job"], "threads": spec["threads"], "images_per_epoch": len(data.train_labels),
            "versions": {"torch": torch.__version__, "torchdistill": torchdistill.__version__},
            "selfdistill": {"epoch_s": times["selfdistill"], "top1": top1(trainer.model, *test)},
            "torchdistill": {"epoch_s": times["torchdistill"], "top1": top1(student, *test)}}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(work(json.loads(args.worker))), flush=True)
    else:
        drive(args)


if __name__ == "__main__":
    main()
