"""The engine with several trainable networks (online distillation), through a small test method:
per-network optimisers and schedules, paused networks, rounds, metrics per network and per pair,
outputs per role, and bit-identical resume."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import ctrl_c_in_epoch, small_config
from selfdistill.engine import Trainer, train
from selfdistill.engine import assemble as assemble_module
from selfdistill.engine import trainer as trainer_module
from selfdistill.errors import UserError
from selfdistill.methods import Batch, Method, MethodStack, Outputs
from selfdistill.methods.base import NetworkSpec, term_owner
from selfdistill.methods.dlb import DLB


class Mutual(Method):
    """Test double: the student and one peer each distil the other's detached prediction; options pause
    the peer on every step, or run two rounds (student steps in round 0, peer in round 1)."""

    name = "mutual"
    term_names = ("mutual_kl", "peer1_mutual_kl")
    stat_names = ("mutual_stat",)

    def __init__(self, pause_peer: bool = False, rounds: int = 1, peer_model: str = "mlp") -> None:
        super().__init__()
        self.pause_peer, self._rounds, self.peer_model = pause_peer, rounds, peer_model

    def networks(self, ctx):
        return [NetworkSpec("peer1", self.peer_model)]

    @property
    def rounds(self):
        return self._rounds

    def paused(self, round):
        if self._rounds > 1:
            return frozenset({"peer1"} if round == 0 else {"student"})
        return frozenset({"peer1"}) if self.pause_peer else frozenset()

    def losses(self, out, batch):
        s, p = out.logits.float(), out.others["peer1"].logits.float()
        return {"mutual_kl": _kl(s, p), "peer1_mutual_kl": _kl(p, s)}

    def stats(self):
        return {"mutual_stat": torch.tensor(0.25)}


def _kl(z, target):
    return F.kl_div(F.log_softmax(z, 1), F.softmax(target.detach(), 1), reduction="batchmean")


def online(monkeypatch, *members):
    """Make the trainer run these methods (fresh copies for every run: methods keep state)."""
    monkeypatch.setattr(assemble_module, "build_method", lambda config: MethodStack(copy.deepcopy(list(members))))


def parameters(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_two_networks_train_together_and_each_is_reported_and_saved(tmp_path, monkeypatch):
    online(monkeypatch, Mutual(peer_model="cnn"))
    metrics = train(small_config(train={"epochs": 2}), tmp_path / "run")
    run = tmp_path / "run"
    assert {"model.pt", "model.json", "peer1.pt", "peer1.json", "metrics.json"} <= {p.name for p in run.iterdir()}
    card = json.loads((run / "peer1.json").read_text())
    assert card["model"] == "cnn" and json.loads((run / "model.json").read_text())["model"] == "mlp"
    assert metrics["networks"]["peer1"]["model"] == "cnn" and metrics["networks"]["peer1"]["weights"] == "peer1.pt"
    for key in ("peer1_test_top1", "peer1_test_nll", "peer1_test_ece", "test_agreement_peer1_student",
                "test_kl_peer1_student", "ensemble_test_top1", "ensemble_test_nll", "ensemble_test_ece"):
        assert metrics[key] is not None, key
    assert metrics["networks"]["peer1"]["top1"] == metrics["peer1_test_top1"]
    assert 0 <= metrics["test_agreement_peer1_student"] <= 100 and metrics["test_kl_peer1_student"] >= 0
    log = (run / "log.csv").read_text().splitlines()
    header = log[0].split(",")
    assert {"ce", "mutual_kl", "peer1_ce", "peer1_mutual_kl", "mutual_stat"} <= set(header)
    assert float(log[-1].split(",")[header.index("mutual_stat")]) == pytest.approx(0.25)
    assert metrics["peer1_test_top1"] != metrics["test_top1"] or metrics["test_kl_peer1_student"] > 0


def test_the_ensemble_and_pair_figures_are_those_of_the_saved_networks(tmp_path, monkeypatch):
    online(monkeypatch, Mutual())
    trainer = Trainer(small_config(train={"epochs": 1, "device": "cpu"}), tmp_path / "run")  # fp32, as below
    metrics = trainer.fit()
    d = trainer.data
    x = trainer.augment.eval(d.test_images)
    with torch.no_grad():
        s, p = (net.model.eval()(x).softmax(1) for net in trainer.nets)

    def percent(hits):
        return pytest.approx(100 * hits.float().mean().item())

    labels = d.test_labels
    assert metrics["test_top1"] == percent(s.argmax(1) == labels)
    assert metrics["peer1_test_top1"] == percent(p.argmax(1) == labels)
    assert metrics["ensemble_test_top1"] == percent(((s + p) / 2).argmax(1) == labels)
    assert metrics["test_agreement_peer1_student"] == percent(s.argmax(1) == p.argmax(1))
    kl = (p * (p.log() - s.log())).sum(1).mean().item()
    assert metrics["test_kl_peer1_student"] == pytest.approx(kl, rel=1e-4)


def test_a_networks_terms_reach_only_its_own_parameters(monkeypatch):
    """One backward over the summed terms: each network's terms, alone, give gradient to that network only."""
    online(monkeypatch, Mutual())
    trainer = Trainer(small_config())
    idx = torch.arange(16)
    batch = trainer.method.extend(Batch.new(trainer.data.train_images[idx],
                                                           trainer.data.train_labels[idx], idx))
    batch.inputs = trainer._inputs(batch, torch.Generator(trainer.device).manual_seed(0))
    for owner in ("student", "peer1"):
        outs = [net(batch.inputs, None) for net in trainer.nets]
        out = Outputs(outs[0].logits, {}, {"peer1": outs[1]})
        terms = trainer.method.losses(out, batch)
        mine = [v for k, v in terms.items() if k.startswith("peer1_") == (owner == "peer1")]
        for net in trainer.nets:
            net.optimizer.zero_grad(set_to_none=True)
        torch.stack(mine).sum().backward()
        for net in trainer.nets:
            grads = [p.grad for p in net.model.parameters()]
            if net.role == owner:
                assert any(g is not None and g.abs().sum() > 0 for g in grads)
            else:
                assert all(g is None for g in grads), f"{owner}'s terms reached the {net.role}"


def test_a_paused_network_does_not_step_but_its_batch_norm_still_moves(tmp_path, monkeypatch):
    online(monkeypatch, Mutual(pause_peer=True, peer_model="cnn"))
    trainer = Trainer(small_config(train={"epochs": 1}))
    peer = trainer.nets[1]
    before_student, before_peer = parameters(trainer.model), parameters(peer.model)
    trainer.fit()
    after_peer = parameters(peer.model)
    moved = [k for k in before_peer if not torch.equal(before_peer[k], after_peer[k])]
    assert moved and all("running" in k or "num_batches" in k for k in moved)  # statistics only: no weight stepped
    assert any(not torch.equal(before_student[k], v) for k, v in parameters(trainer.model).items() if "weight" in k)


def test_rounds_step_one_network_each_on_the_same_rows(monkeypatch):
    online(monkeypatch, Mutual(rounds=2))
    trainer = Trainer(small_config(train={"epochs": 1}))
    calls = []
    original = trainer._round

    def spy(batch, teachers, round):
        before = [parameters(net.model) for net in trainer.nets]
        out = original(batch, teachers, round)
        after = [parameters(net.model) for net in trainer.nets]
        changed = [any(not torch.equal(b[k], a[k]) for k in b) for b, a in zip(before, after)]
        calls.append((round, batch.inputs.data_ptr(), changed))
        return out

    trainer._round = spy
    trainer.fit()
    assert [c[0] for c in calls[:4]] == [0, 1, 0, 1]
    assert calls[0][1] == calls[1][1]  # the second round sees the very same augmented rows
    assert all(changed == ([True, False] if r == 0 else [False, True]) for r, _, changed in calls)


def test_each_role_takes_its_own_optimiser_settings_and_unknown_roles_are_refused(monkeypatch):
    online(monkeypatch, Mutual())
    trainer = Trainer(small_config(optim={"lr": 0.01}, roles={"peer1": {"optim": {"lr": 0.3, "momentum": 0.5}}}))
    student, peer = trainer.nets
    assert student.optimizer.param_groups[0]["lr"] == 0.01
    assert peer.optimizer.param_groups[0]["lr"] == 0.3 and peer.optimizer.param_groups[0]["momentum"] == 0.5
    with pytest.raises(UserError, match=r"roles.peer2: method .* has no network of that role; the roles that take se"):
        Trainer(small_config(roles={"peer2": {"optim": {"lr": 0.3}}}))


def test_a_network_that_cannot_take_the_images_ends_with_one_line(monkeypatch):
    online(monkeypatch, Mutual(peer_model="cnn"))
    with pytest.raises(UserError, match=r"the peer1 network \(cnn\) cannot take 1x2x2 images"):
        Trainer(small_config(data={"synthetic": {"size": 2}}))


def test_replicable_methods_run_on_every_network_with_their_own_state(tmp_path, monkeypatch):
    online(monkeypatch, Mutual(), DLB())
    trainer = Trainer(small_config(train={"epochs": 1}))
    metrics = trainer.fit()
    assert "peer1_dlb_kl" in trainer.method.term_names and metrics["peer1_test_top1"] is not None
    own, peers = trainer.method.members[-1], trainer.method.copies["peer1"][-1]
    assert own is not peers and not torch.equal(own.previous["logits"], peers.previous["logits"])
    assert torch.equal(own.previous["images"], peers.previous["images"])  # the same replayed rows


def test_a_resumed_two_network_run_ends_bit_identical(tmp_path, monkeypatch):
    online(monkeypatch, Mutual(peer_model="cnn"), DLB())
    config = small_config(train={"epochs": 3, "deterministic": True})
    train(config, tmp_path / "full")
    with ctrl_c_in_epoch(1), pytest.raises(trainer_module.Interrupted):
        train(config, tmp_path / "cut")
    train(config, tmp_path / "cut", resume=True)
    for name in ("model.pt", "peer1.pt"):
        full, resumed = (torch.load(tmp_path / run / name, weights_only=True) for run in ("full", "cut"))
        assert all(torch.equal(full[k], resumed[k]) for k in full), name
    a, b = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("full", "cut"))
    assert a["peer1_test_nll"] == b["peer1_test_nll"] and a["ensemble_test_nll"] == b["ensemble_test_nll"]


@pytest.fixture(scope="module")
def frozen_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    train(small_config(model={"name": "cnn"}, train={"epochs": 1}), out)
    return str(out)


@pytest.mark.parametrize("method", [
    {"name": "dml", "peers": ["mlp", "cnn"]},
    {"name": "dml+dlb", "dml": {"peers": ["cnn"]}},
    {"name": "switokd", "teacher_model": "cnn"},
    {"name": "bd_kd", "teacher_model": "cnn"},
    {"name": "sokd"},
])
def test_each_networks_terms_of_every_online_method_reach_only_that_network(method, frozen_teacher):
    """The property the one backward over the summed terms rests on: every target taken from another network is
    detached, so the terms a network owns give gradient to that network's parameters and to no other's."""
    teachers = [frozen_teacher] if method["name"] == "sokd" else []
    trainer = Trainer(small_config(method=method, teachers=teachers))
    idx = torch.arange(16)
    gen = torch.Generator(trainer.device).manual_seed(0)
    roles = [net.role for net in trainer.nets]
    for step in range(2):  # the second step has DLB's replayed rows
        batch = trainer.method.extend(Batch.new(trainer.data.train_images[idx],
                                                               trainer.data.train_labels[idx], idx))
        batch.inputs = trainer._inputs(batch, gen)
        frozen = {t.role: t(batch.inputs) for t in trainer.teachers}
        if step == 0:
            out, _, _ = trainer._round(batch, frozen, 0)
            trainer.method.update(out, batch)
    for owner in roles:
        outs = [net(batch.inputs, batch.forward_splits()) for net in trainer.nets]
        out = Outputs(outs[0].logits, outs[0].features,
                                     {**frozen, **{r: o for r, o in zip(roles[1:], outs[1:])}})
        terms = trainer.method.losses(out, batch)
        mine = [v for k, v in terms.items() if term_owner(k, roles[1:]) == owner]
        assert mine and all(v.requires_grad for v in mine), owner
        for net in trainer.nets:
            net.optimizer.zero_grad(set_to_none=True)
        torch.stack(mine).sum().backward()
        for net in trainer.nets:
            grads = [p.grad for p in net.model.parameters() if p.requires_grad]
            if net.role == owner:
                assert any(g is not None and g.abs().sum() > 0 for g in grads), owner
            else:
                assert all(g is None for g in grads), f"the {owner}'s terms reached the {net.role}"
        assert all(p.grad is None for t in trainer.teachers for p in t.module.parameters())
