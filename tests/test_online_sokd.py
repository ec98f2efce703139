"""SOKD: its three terms by hand, which network each one trains, and the knowledge-bridge branch (a whole
network of the teacher's architecture whose trunk stays the frozen teacher)."""

import math

import pytest
import torch
import torch.nn as nn

from selfdistill.errors import UserError
from selfdistill.methods import Batch, Outputs, build_method, method_options
from selfdistill.methods.base import SetupContext, term_owner
from selfdistill.methods.sokd import SOKD, SOKDOptions
from selfdistill.models import MODELS, build_model

SHAPE = (3, 16, 16)


def context(arch="resnet8", classes=10, shape=SHAPE, seed=0):
    torch.manual_seed(seed)
    teacher = build_model(arch, classes, shape[0], shape[1])
    with torch.no_grad():  # "pretrained": its batch-norm statistics are no longer the initial ones
        teacher.train()(torch.randn(8, *shape))
    teacher.requires_grad_(False)
    return SetupContext(model=build_model("cnn", classes, shape[0], shape[1]), model_name="cnn",
                        num_classes=classes, input_shape=shape, train_labels=torch.zeros(4, dtype=torch.long),
                        epochs=1, device=torch.device("cpu"), teachers=[teacher.eval()], teacher_names=[arch])


def branch_of(ctx, **options):
    (spec,) = SOKD(SOKDOptions(**options)).networks(ctx)
    assert spec.role == "branch" and spec.model == ctx.teacher_names[0]
    return spec.module


def outputs(z_s, z_a, z_t):
    return Outputs(z_s, others={"teacher": Outputs(z_t), "branch": Outputs(z_a)})


def test_terms_by_hand():
    # tau = 1, one row, two classes: teacher (3/4, 1/4), branch (1/2, 1/2), student (1/3, 2/3)
    z_t, z_a, z_s = torch.tensor([[math.log(3.0), 0.0]]), torch.zeros(1, 2), torch.tensor([[0.0, math.log(2.0)]])
    method = SOKD(SOKDOptions(temperature=1.0, lambda_teacher=2.0, lambda_student=3.0, lambda_branch=5.0))
    terms = method.losses(outputs(z_s, z_a, z_t), Batch.new(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long)))
    teacher_to_branch = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # KL((3/4, 1/4) || (1/2, 1/2))
    student_to_branch = 1 / 3 * math.log(2 / 3) + 2 / 3 * math.log(4 / 3)  # KL((1/3, 2/3) || (1/2, 1/2))
    branch_to_student = 0.5 * math.log(1.5) + 0.5 * math.log(0.75)  # KL((1/2, 1/2) || (1/3, 2/3))
    assert terms["branch_sokd_teacher_kl"].item() == pytest.approx(2.0 * teacher_to_branch, abs=1e-6)
    assert terms["branch_sokd_student_kl"].item() == pytest.approx(3.0 * student_to_branch, abs=1e-6)
    assert terms["sokd_kl"].item() == pytest.approx(5.0 * branch_to_student, abs=1e-6)
    assert set(terms) == set(SOKD.term_names)


def test_temperature_squared_and_batch_mean():
    torch.manual_seed(1)
    z_s, z_a, z_t = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    terms = SOKD(SOKDOptions(temperature=2.0)).losses(outputs(z_s, z_a, z_t), Batch.new(torch.zeros(3, 1),
                                                                                          torch.zeros(3).long()))
    p = torch.softmax(z_t / 2, 1)
    expected = 4 * (p * (p.log() - torch.log_softmax(z_a / 2, 1))).sum(1).mean()
    assert terms["branch_sokd_teacher_kl"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_each_network_s_terms_leave_the_other_s_logits_without_gradient():
    torch.manual_seed(2)
    z_s, z_a = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    terms = SOKD().losses(outputs(z_s, z_a, torch.randn(4, 5)), Batch.new(torch.zeros(4, 1), torch.zeros(4).long()))
    owners = {name: term_owner(name, ("branch",)) for name in terms}
    assert owners == {"sokd_kl": "student", "branch_sokd_teacher_kl": "branch", "branch_sokd_student_kl": "branch"}
    (g_s, g_a) = torch.autograd.grad(terms["sokd_kl"], (z_s, z_a), allow_unused=True, materialize_grads=True)
    assert g_s.abs().sum() > 0 and torch.equal(g_a, torch.zeros_like(z_a))
    branch = terms["branch_sokd_teacher_kl"] + terms["branch_sokd_student_kl"]
    (g_s, g_a) = torch.autograd.grad(branch, (z_s, z_a), allow_unused=True, materialize_grads=True)
    assert g_a.abs().sum() > 0 and torch.equal(g_s, torch.zeros_like(z_s))


def test_only_the_last_stage_and_what_follows_train_and_the_frozen_trunk_keeps_its_statistics():
    branch = branch_of(context())
    trainable = {name.split(".")[0] for name, p in branch.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "fc"}
    before = {k: v.clone() for k, v in branch.state_dict().items()}
    branch.train()  # what the engine does each epoch: the trunk stays in eval mode, the last stage trains
    assert not branch.stem.training and not branch.layer2[0].bn1.training and branch.layer3[0].bn1.training
    branch(torch.randn(6, *SHAPE)).logsumexp(1).sum().backward()
    moved = {k for k, v in branch.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and all(k.startswith("layer3.") for k in moved)  # only the last stage's running statistics
    for name, p in branch.named_parameters():
        assert (p.grad is not None) == name.startswith(("layer3.", "fc."))


@pytest.mark.parametrize("arch,trainable", [("wrn16_1", {"layer3", "pool", "fc"}), ("mlp", {"layer2", "fc"}),
                                            ("MobileNetV2", {"layer4", "conv2", "fc"}),
                                            ("ShuffleV2", {"layer3", "conv2", "bn2", "fc"})])
def test_what_follows_the_last_stage_trains_in_every_family(arch, trainable):
    shape = (1, 28, 28) if arch == "mlp" else (3, 32, 32)
    branch = branch_of(context(arch, shape=shape), branch_init="teacher")
    assert {name.split(".")[0] for name, p in branch.named_parameters() if p.requires_grad} == trainable


def test_the_branch_is_a_plain_network_of_the_teacher_s_architecture():
    ctx = context()
    branch = branch_of(ctx).eval()
    plain = build_model("resnet8", 10, *SHAPE[:2])
    plain.load_state_dict(branch.state_dict())  # strict: the same keys, so branch.pt can be a --teacher
    x = torch.randn(4, *SHAPE)
    assert torch.equal(plain.eval()(x), branch(x))


def test_branch_init_teacher_starts_as_the_teacher_and_random_keeps_only_its_trunk():
    ctx = context()
    x = torch.randn(4, *SHAPE)
    z_t = ctx.teachers[0](x)
    assert torch.allclose(branch_of(ctx, branch_init="teacher").eval()(x), z_t, atol=1e-6)
    random = branch_of(ctx, branch_init="random")
    assert not torch.allclose(random.eval()(x), z_t, atol=1e-3)
    teacher = ctx.teachers[0].state_dict()
    for key, value in random.state_dict().items():
        if not key.startswith(("layer3.", "fc.")):
            assert torch.equal(value, teacher[key]), key
        elif key.endswith(("running_mean", "conv1.weight", "fc.weight")):  # the architecture's initialisation
            assert not torch.equal(value, teacher[key]), key


def test_the_stack_adds_each_network_s_cross_entropy():
    stack = build_method({"name": "sokd", **method_options("sokd", {})})
    assert stack.teachers_needed == (1, 1)
    (spec,) = stack.networks(context())
    assert spec.role == "branch"
    assert set(stack.term_names) == {"ce", "branch_ce", *SOKD.term_names}


class OneStage(nn.Module):
    stages = ("layer1",)

    def __init__(self, num_classes, in_channels, image_size):
        super().__init__()
        self.layer1 = nn.Conv2d(in_channels, num_classes, 3)

    def forward(self, x):
        return self.layer1(x).mean((2, 3))


def test_a_teacher_without_a_last_stage_after_others_is_refused(monkeypatch):
    monkeypatch.setitem(MODELS, "one_stage", OneStage)
    with pytest.raises(UserError, match="sokd.*'one_stage'.*last stage"):
        branch_of(context("one_stage"))


def test_bad_options_name_the_field():
    with pytest.raises(UserError, match="method.branch_init"):
        method_options("sokd", {"branch_init": "copy"})
    with pytest.raises(UserError, match="method.lambda_student"):
        method_options("sokd", {"lambda_student": -1.0})
