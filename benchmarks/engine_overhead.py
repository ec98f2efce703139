"""Engine overhead: training images/s of the engine (method ce) against a bare PyTorch loop.

What is timed: the training loop only (no evaluation, no checkpoint writing, no data loading), after
one warm-up epoch each. Both sides use the same model (same init), the same in-memory uint8 data,
the same batched augmentation (random crop + flip + normalise, on the device), the same optimiser
and batch size; the bare loop is the minimal step ``forward, cross_entropy, zero_grad, backward,
step``, its batches made contiguous in the best layout for the model (``--layout best``: channels_last
where the engine's ``train.channels_last: auto`` measured it faster on a CPU, else NCHW), so the ratio
does not rest on whichever strides the augmentation happened to leave. The two alternate, ``--repeats``
times each, in one process; the median of each is reported.

    python benchmarks/engine_overhead.py                       # full Fashion-MNIST if found, else the bundled slice
    python benchmarks/engine_overhead.py --model resnet20 --images 6000
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from timing import parse_timing_args, say_round, timing_data, timing_parser, timing_trainer

from selfdistill.data import Augment
from selfdistill.engine.optim import make_optimizer
from selfdistill.engine.runtime import derive_seed
from selfdistill.models import build_model, faster_in_channels_last_on_cpu


def bare_epoch(model, optimizer, images, labels, augment, batch_size, generator, layout) -> float:
    """One epoch of the minimal loop, its batches made contiguous in ``layout``; returns images/s."""
    model.train()
    order = torch.randperm(len(labels), generator=generator)
    start = time.perf_counter()
    for idx in order.split(batch_size):
        if len(idx) < 2:
            continue
        x = augment(images[idx], generator).contiguous(memory_format=layout)
        loss = F.cross_entropy(model(x), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return len(labels) / (time.perf_counter() - start)


def _name(channels_last: bool) -> str:
    return "channels_last" if channels_last else "NCHW"


def main() -> None:
    parser = timing_parser(__doc__)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--layout", choices=("best", "nchw", "channels_last"), default="best",
                        help="the bare loop's memory layout; best: the one the engine's auto measured faster")
    args = parse_timing_args(parser)
    data = timing_data(args)
    trainer = timing_trainer(args, data, method={"name": "ce"}, model={"name": args.model})
    augment = Augment(data.mean, data.std, data.augment.crop_padding, data.augment.flip)
    torch.manual_seed(derive_seed(0, "init"))
    nhwc = args.layout == "channels_last" or (args.layout == "best" and faster_in_channels_last_on_cpu(args.model))
    layout = torch.channels_last if nhwc else torch.contiguous_format
    model = build_model(args.model, data.num_classes, data.in_channels, data.image_size).to(memory_format=layout)
    optimizer = make_optimizer(list(model.parameters()), trainer.config.optim)
    generator = torch.Generator().manual_seed(0)

    bare, engine = [], []
    for rep in range(args.repeats + 1):  # the first round is a warm-up
        b = bare_epoch(model, optimizer, data.train_images, data.train_labels, augment, args.batch_size, generator,
                       layout)
        result = trainer.train_epoch(rep)
        e = result.rows / result.seconds
        if rep:
            bare.append(b)
            engine.append(e)
        say_round(rep, [("bare", b), ("engine", e)])
    b, e = statistics.median(bare), statistics.median(engine)
    print(f"\n{args.model}, {args.dataset} ({len(data.train_labels)} images/epoch), batch {args.batch_size}, "
          f"bare loop {_name(nhwc)}, engine {_name(trainer.precision.channels_last)}, "
          f"{torch.get_num_threads()} threads: bare {b:,.0f} img/s, engine {e:,.0f} img/s, ratio {e / b:.3f}")

if __name__ == "__main__":
    main()
