"""Writes the CIFAR-100 teacher->student recipes (``src/selfdistill/configs/<method>_c100_<teacher>_<student>.yaml``)
from one table, so that every cell shares the benchmark's recipe and carries its published number and source.

    python tools/kd_recipes.py          # rewrite the recipes; tests/test_docs_and_recipes.py checks they match

The recipe (RepDistiller train_student.py, mdistiller cfg.py; shared by DIST's and CA-MKD's CIFAR code):
SGD momentum 0.9, weight decay 5e-4, batch 64, 240 epochs, lr 0.05 (0.01 for MobileNetV2 / ShuffleNet
students) x0.1 at epochs 150/180/210, RandomCrop(32, pad 4) + flip. RepDistiller and mdistiller use plain
momentum (no Nesterov); CA-MKD uses Nesterov. Teachers: the published ``cifar_teachers`` checkpoints
(RepDistiller ``scripts/fetch_pretrained_teachers.sh``; mdistiller's ``cifar_teachers.tar`` release), expected
under ``cifar_teachers/<teacher>_vanilla/ckpt_epoch_240.pth``; point elsewhere with ``--teacher PATH:ARCH``.
"""

from __future__ import annotations

import sys
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "selfdistill" / "configs"
REPDISTILLER = "RepDistiller README (HobbitLong/RepDistiller @ 0eb3a95), CIFAR-100 benchmark table"
MDISTILLER = "mdistiller README (megvii-research/mdistiller @ a08d46f), DKD CIFAR-100 table"
DIST = "DIST README (hunto/DIST_KD @ 2418f18), CIFAR-100 table"
# the published teachers' own top-1 (RepDistiller README, first row of its tables)
TEACHER_TOP1 = {"wrn_40_2": 75.61, "resnet56": 72.34, "resnet110": 74.31, "resnet32x4": 79.42, "vgg13": 74.64,
                "ResNet50": 79.34}
SMALL_LR_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")

SAME = [("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
        ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8")]
CROSS = [("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"), ("resnet32x4", "ShuffleV1"),
         ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1")]
REPDISTILLER_TABLE = {  # RepDistiller README, rows KD / SP / CRD, columns SAME then CROSS
    "kd": [74.92, 73.54, 70.66, 70.67, 73.08, 73.33, 72.98, 67.37, 67.35, 73.81, 74.07, 74.45, 74.83],
    "sp": [73.83, 72.43, 69.67, 70.04, 72.69, 72.94, 72.68, 66.30, 68.08, 73.34, 73.48, 74.56, 74.52],
    "crd": [75.48, 74.14, 71.16, 71.46, 73.48, 75.51, 73.94, 69.73, 69.11, 74.30, 75.11, 75.65, 76.05],
}
METHOD_OPTIONS = {  # the benchmark's settings of each method (RepDistiller flags -r/-a/-b; mdistiller cfg)
    "kd": "{name: kd, temperature: 4.0, ce_weight: 0.1, kd_weight: 0.9}",
    "sp": "{name: sp, gamma: 3000.0, ce_weight: 1.0}",
    "crd": "{name: crd, beta: 0.8, kd_weight: 0.0, ce_weight: 1.0, nce_k: 16384, nce_t: 0.07, momentum: 0.5, "
           "feat_dim: 128}",
}
# DKD: (teacher, student, published top-1, beta of the pair's mdistiller config)
DKD = [("resnet56", "resnet20", 71.97, 2.0), ("resnet110", "resnet32", 74.11, 2.0),
       ("resnet32x4", "resnet8x4", 76.32, 8.0), ("wrn_40_2", "wrn_16_2", 76.23, 6.0),
       ("wrn_40_2", "wrn_40_1", 74.81, 6.0), ("vgg13", "vgg8", 74.68, 6.0), ("resnet32x4", "ShuffleV1", 76.45, 8.0),
       ("wrn_40_2", "ShuffleV1", 76.70, 8.0), ("vgg13", "MobileNetV2", 69.71, 6.0),
       ("ResNet50", "MobileNetV2", 70.35, 8.0), ("resnet32x4", "ShuffleV2", 77.07, 8.0)]
DIST_CELLS = [("wrn_40_2", "wrn_40_1", 74.43), ("resnet56", "resnet20", 71.75), ("resnet32x4", "resnet8x4", 76.31),
              ("ResNet50", "MobileNetV2", 68.66), ("resnet32x4", "ShuffleV1", 76.34),
              ("resnet32x4", "ShuffleV2", 77.35)]


def teacher_path(teacher: str) -> str:
    return f"cifar_teachers/{teacher}_vanilla/ckpt_epoch_240.pth"


def recipe(method: str, options: str, teachers: list[str], student: str, reproduces: str, notes: list[str],
           nesterov: bool = False) -> str:
    lr = 0.01 if student in SMALL_LR_STUDENTS else 0.05
    names = " + ".join(teachers)
    lines = [
        f"# {method.upper()} {names} -> {student} on CIFAR-100, the KD benchmark's recipe (GPU: ~1-3 h).",
        f"# Reproduces: {reproduces}",
        *[f"# {note}" for note in notes],
        "# Recipe: SGD momentum 0.9, wd 5e-4, batch 64, 240 epochs, lr x0.1 at 150/180/210 (see tools/kd_recipes.py).",
        "# Teachers: the published cifar_teachers checkpoints; elsewhere: --teacher PATH:ARCH (repeat per teacher).",
        f"method: {options}",
        f"model: {{name: {student}}}",
        "teachers:",
        *[f"  - {{path: {teacher_path(t)}, model: {t}}}" for t in teachers],
        "data: {dataset: cifar100, batch_size: 64}",
        f"optim: {{name: sgd, lr: {lr}, momentum: 0.9, nesterov: {str(nesterov).lower()}, weight_decay: 5.0e-4}}",
        "schedule: {name: multistep, milestones: [150, 180, 210], gamma: 0.1}",
        "train: {epochs: 240}",
    ]
    return "\n".join(lines) + "\n"


def teacher_note(teacher: str) -> str:
    return f"Teacher {teacher}: {TEACHER_TOP1[teacher]:.2f} top-1 (RepDistiller README)."


def all_recipes() -> dict[str, str]:
    out: dict[str, str] = {}
    for method, numbers in REPDISTILLER_TABLE.items():
        for (teacher, student), top1 in zip(SAME + CROSS, numbers):
            out[f"{method}_c100_{teacher}_{student}"] = recipe(
                method, METHOD_OPTIONS[method], [teacher], student, f"{top1:.2f} top-1, {REPDISTILLER}",
                [teacher_note(teacher)])
    for teacher, student, top1, beta in DKD:
        header = "ResNet32x4 -> MobileNet-V2 in the README's header; its KD baseline and config are ShuffleNet-V2"
        notes = [teacher_note(teacher), f"beta={beta:g} as in the pair's mdistiller config; warm-up 20 epochs."]
        if student == "ShuffleV2":
            notes.append(header)
        out[f"dkd_c100_{teacher}_{student}"] = recipe(
            "dkd", f"{{name: dkd, alpha: 1.0, beta: {beta}, temperature: 4.0, warmup_epochs: 20, ce_weight: 1.0}}",
            [teacher], student, f"{top1:.2f} top-1, {MDISTILLER}", notes)
    for teacher, student, top1 in DIST_CELLS:
        out[f"dist_c100_{teacher}_{student}"] = recipe(
            "dist", "{name: dist, temperature: 4.0, beta: 2.0, gamma: 2.0, ce_weight: 1.0}", [teacher], student,
            f"{top1:.2f} top-1, {DIST}", [teacher_note(teacher), "DIST's CIFAR config: tau=4, kd_loss_weight 2."])
    out["mix_kd_c100_resnet110_resnet20"] = recipe(
        "mix_kd", "{name: mix_kd}", ["resnet110"], "resnet20",
        "MIX-KD's default pair (hchoi71/MIX-KD, PMU + standardised logits); its README shows the figures only as "
        "a heatmap [unverified]", [teacher_note("resnet110")])
    out["ca_mkd_c100_3xresnet32x4_vgg8"] = recipe(
        "ca_mkd", "{name: ca_mkd}", ["resnet32x4", "resnet32x4", "resnet32x4"], "vgg8",
        "CA-MKD's default setting (Rorozhl/CA-MKD: three ResNet32x4 teachers of different seeds -> vgg8); "
        "its table could not be read [unverified]",
        ["Give three teachers trained with different seeds (one published file exists): --teacher A:resnet32x4 "
         "--teacher B:resnet32x4 --teacher C:resnet32x4.", "CA-MKD's code uses Nesterov momentum."], nesterov=True)
    return out


def main() -> None:
    recipes = all_recipes()
    for name, text in recipes.items():
        (CONFIGS / f"{name}.yaml").write_text(text)
    print(f"wrote {len(recipes)} recipes to {CONFIGS}", file=sys.stderr)


if __name__ == "__main__":
    main()
