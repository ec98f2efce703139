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
        cfg, d, dev = self.config, self.data, self.device
        torch.manual_seed(derive_seed(cfg.train.seed, "torch", epoch, self.ctx.rank))
        aug_gen = torch.Generator(device=dev).manual_seed(derive_seed(cfg.train.seed, "augment", epoch, self.ctx.rank))
        batches = self._epoch_batches(epoch)
        self.method.start_epoch(epoch)
        for net in self.nets:
            net.train()
        names, stat_names, rounds = self.method.term_names, self.method.stat_names, self.method.rounds
        term_sums = torch.zeros(len(names), device=dev)
        stat_sums = torch.zeros(len(stat_names), device=dev)
        correct = torch.zeros((), device=dev)
        finite = torch.ones((), dtype=torch.bool, device=dev)
        rows = new_rows = 0
        self.progress.start_epoch(epoch, cfg.train.epochs, len(batches))
        synchronize(dev)
        start = time.perf_counter()
        for step, idx in enumerate(batches):
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
                    term_sums += torch.stack([t.detach().float() for t in terms.values()]) / rounds
            self.method.update(out, batch)  # after backward: state it changes in place may be in the graph (CRD)

            with torch.no_grad():
                if stat_names:
                    stats = self.method.stats()
                    stat_sums += torch.stack([stats[n].detach().float().to(dev) for n in stat_names])
                new = batch.parts["new"]
                correct += (out.logits[new].argmax(1) == batch.labels[new]).sum()
                finite &= torch.isfinite(loss.detach())
            rows += len(batch)
            new_rows += new.stop - new.start
            if (step + 1) % CHECK_EVERY == 0 or step + 1 == len(batches):
                if not self.ctx.enabled and not bool(finite):
                    raise TrainingDiverged(f"the loss became non-finite in epoch {epoch + 1} near step {step + 1}")
                if self.progress.wants_stats:
                    self.progress.update(step + 1, {"loss": float(term_sums.sum() / (step + 1)),
                                                    "acc": 100.0 * float(correct) / max(new_rows, 1)})
            if self.progress.status_due():
                self.progress.status(step + 1, {"loss": float(term_sums.sum() / (step + 1)), "images": rows,
                                                "acc": 100.0 * float(correct) / max(new_rows, 1)})
        synchronize(dev)
        seconds = time.perf_counter() - start
        if any_rank(not bool(finite), self.ctx, dev):
            raise TrainingDiverged(f"the loss became non-finite in epoch {epoch + 1}")
        totals = all_reduce_sum(torch.cat([term_sums, stat_sums, correct[None],
                                           torch.tensor([float(new_rows), float(rows), float(len(batches))],
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
