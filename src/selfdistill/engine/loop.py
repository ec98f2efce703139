"""One epoch, step by step: the method's batches, the augmented (and mixed) inputs, one forward of every
trainable network, the method's loss terms, one backward, the optimiser steps.

Hot path: data and augmentation stay on the device; per-step statistics are accumulated as device
tensors and read back once per epoch (and every ``CHECK_EVERY`` steps for the finite-loss check, the
progress bar or a status line), so the loop adds no host-device synchronisation of its own to a step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..data import train_batches
from ..data.mixing import apply_mix
from ..distributed import (
    all_reduce_sum,
    any_rank,
)
from ..errors import TrainingDiverged
from ..methods import Batch, Outputs
from .runtime import derive_seed, synchronize

CHECK_EVERY = 25  # steps between checks for a non-finite loss (each check is one device sync)


@dataclass
class EpochResult:
    terms: dict[str, float]
    train_top1: float
    rows: int  # images forwarded on all ranks, replayed/extra rows included
    seconds: float


@dataclass
class StepSums:
    """An epoch's running figures: device tensors the steps add to without reading them, and row counts."""
    terms: torch.Tensor
    stats: torch.Tensor
    correct: torch.Tensor
    finite: torch.Tensor
    rows: int = 0  # forwarded, extra rows included
    new_rows: int = 0  # the loader's


class EpochLoop:
    """Trains one epoch (the second part of :class:`~.trainer.Trainer`)."""

    def _epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        """This rank's index batches: the method's sampler if it has one, else a shuffled pass."""
        cfg = self.config
        order = torch.Generator().manual_seed(derive_seed(cfg.train.seed, "order", epoch))
        args = (self.batch_size, order, cfg.data.drop_last, self.ctx.rank, self.ctx.world_size)
        batches = self.method.batches(self.train_labels_cpu, *args)
        return batches if batches is not None else train_batches(len(self.train_labels_cpu), *args)

    def _inputs(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        """Augment every row afresh; mix rows with their (augmented) partners when mixing is on."""
        inputs = self.augment(batch.images, generator)
        if batch.mix is not None:
            inputs = apply_mix(inputs, self.augment(batch.mix.partner_images, generator), batch.mix)
        return self.precision.inputs(inputs)

    def train_epoch(self, epoch: int) -> EpochResult:
        cfg, dev = self.config, self.device
        torch.manual_seed(derive_seed(cfg.train.seed, "torch", epoch, self.ctx.rank))
        aug_gen = torch.Generator(device=dev).manual_seed(derive_seed(cfg.train.seed, "augment", epoch, self.ctx.rank))
        batches = self._epoch_batches(epoch)
        self.method.start_epoch(epoch)
        for net in self.nets:
            net.train()
        sums = StepSums(torch.zeros(len(self.method.term_names), device=dev),
                        torch.zeros(len(self.method.stat_names), device=dev), torch.zeros((), device=dev),
                        torch.ones((), dtype=torch.bool, device=dev))
        self.progress.start_epoch(epoch, cfg.train.epochs, len(batches))
        synchronize(dev)
        start = time.perf_counter()
        for step, idx in enumerate(batches):
            self._step(epoch, step, idx, aug_gen, sums)
            check = (step + 1) % CHECK_EVERY == 0 or step + 1 == len(batches)
            if check or self.progress.status_due():
                self._periodic_check(epoch, step + 1, check, sums)
        synchronize(dev)
        seconds = time.perf_counter() - start
        return self._epoch_totals(epoch, len(batches), sums, seconds)

    def _step(self, epoch: int, step: int, idx: torch.Tensor, aug_gen: torch.Generator, sums: StepSums) -> None:
        """One training step, adding its figures to ``sums`` on the device: no host-device synchronisation
        here (``tests/test_step_sync.py`` holds every method to it)."""
        d, dev, rounds = self.data, self.device, self.method.rounds
        for net in self.nets:
            net.schedule.apply(net.optimizer, epoch, step)
        idx = idx.to(dev, non_blocking=True)
        batch = Batch.new(d.train_images[idx], d.train_labels[idx], idx)
        if self.mixer is not None:
            batch.mix = self.mixer.draw(batch.images, batch.labels, aug_gen)
        batch = self.method.extend(batch)
        batch.inputs = self._inputs(batch, aug_gen)
        teachers = {teacher.role: teacher(batch.inputs) for teacher in self.teachers}
        for round in range(rounds):
            out, terms, loss = self._round(batch, teachers, round)
            with torch.no_grad():
                sums.terms += torch.stack([t.detach().float() for t in terms.values()]) / rounds
        self.method.update(out, batch)  # after backward: state it changes in place may be in the graph (CRD)
        with torch.no_grad():
            if self.method.stat_names:
                stats = self.method.stats()
                sums.stats += torch.stack([stats[n].detach().float().to(dev, non_blocking=True)
                                           for n in self.method.stat_names])
            new = batch.parts["new"]
            sums.correct += (out.logits[new].argmax(1) == batch.labels[new]).sum()
            sums.finite &= torch.isfinite(loss.detach())
        sums.rows += len(batch)
        sums.new_rows += new.stop - new.start

    def _periodic_check(self, epoch: int, steps_done: int, check: bool, sums: StepSums) -> None:
        """Every ``CHECK_EVERY`` steps and at the epoch's last (``check``), and when a status line is due: stop
        on a non-finite loss (``check`` only), move the bar, print the status line. Each reads the device."""
        if check and not self.ctx.enabled and not bool(sums.finite):
            raise TrainingDiverged(f"the loss became non-finite in epoch {epoch + 1} near step {steps_done}")
        if self.progress.wants_stats:
            self.progress.update(steps_done, {"loss": float(sums.terms.sum() / steps_done),
                                              "acc": 100.0 * float(sums.correct) / max(sums.new_rows, 1)})
        if self.progress.status_due():
            self.progress.status(steps_done, {"loss": float(sums.terms.sum() / steps_done), "images": sums.rows,
                                              "acc": 100.0 * float(sums.correct) / max(sums.new_rows, 1)})

    def _epoch_totals(self, epoch: int, steps: int, sums: StepSums, seconds: float) -> EpochResult:
        """The epoch's mean terms and statistics and its train top-1, summed over ranks: read once."""
        dev, names, stat_names = self.device, self.method.term_names, self.method.stat_names
        if any_rank(not bool(sums.finite), self.ctx, dev):
            raise TrainingDiverged(f"the loss became non-finite in epoch {epoch + 1}")
        totals = all_reduce_sum(torch.cat([sums.terms, sums.stats, sums.correct[None],
                                           torch.tensor([float(sums.new_rows), float(sums.rows), float(steps)],
                                                        device=dev)]), self.ctx)
        k = len(names) + len(stat_names)
        steps_all = float(totals[k + 3])
        return EpochResult({n: float(totals[i]) / steps_all for i, n in enumerate((*names, *stat_names))},
                           100.0 * float(totals[k]) / float(totals[k + 1]), int(totals[k + 2]), seconds)

    def _round(self, batch: Batch, teachers: dict[str, Outputs],
               round: int) -> tuple[Outputs, dict[str, torch.Tensor], torch.Tensor]:
        """One forward of every trainable network on the batch's rows, the method's terms, one backward of
        their sum, and a step of every network the method does not pause in this round."""
        splits = batch.forward_splits()
        with self.precision.autocast():
            outs = [net(batch.inputs, splits) for net in self.nets]
            out = Outputs(outs[0].logits, outs[0].features,
                          {**teachers, **{net.role: o for net, o in zip(self.nets[1:], outs[1:])}},
                          tuple(net.role for net in self.nets[1:]))
            terms = self.method.losses(out, batch)
        terms = self.method.detach_paused(terms, round)
        paused = self.method.paused(round)
        loss = torch.stack(list(terms.values())).sum()
        if self.ctx.enabled:  # DDP waits for a gradient of every network it forwarded: give paused ones zeros
            loss = loss + sum(0.0 * o.logits.float().sum() for net, o in zip(self.nets, outs) if net.role in paused)
        for net in self.nets:
            net.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for net in self.nets:
            if net.role not in paused:
                net.optimizer.step()
        return out, terms, loss
