"""``selfdistill.load_model``: a finished run's networks back in Python, with their model cards."""

import pytest
import torch

import selfdistill
from conftest import small_config
from selfdistill.engine import train
from selfdistill.errors import UserError
from selfdistill.models import build_model


def test_load_model_gives_each_network_of_a_run_and_its_card(tmp_path):
    run = tmp_path / "run"
    train(small_config(method={"name": "dml"}, model={"name": "mlp", "options": {"hidden": [24]}}), run)
    for role, weights in ((None, "model.pt"), ("peer1", "peer1.pt")):
        net, card = selfdistill.load_model(run, role=role)
        assert not net.training and card.model == "mlp" and card.options["hidden"] == [24]
        reference = build_model("mlp", card.num_classes, card.in_channels, card.image_size, card.options)
        reference.load_state_dict(torch.load(run / weights, weights_only=True))
        x = torch.randn(3, card.in_channels, card.image_size, card.image_size)
        assert torch.equal(net(x), reference.eval()(x))
    assert selfdistill.resolve([]).model.name == "cnn"  # the top-level names resolve


def test_load_model_refuses_an_unfinished_run_in_one_line(tmp_path):
    (tmp_path / "config.yaml").write_text("{}")
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(UserError, match="has not finished") as info:
        selfdistill.load_model(tmp_path)
    assert "\n" not in str(info.value)
