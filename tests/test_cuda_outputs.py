"""What a run on a GPU leaves behind: weights files that open on a machine without one. Skipped where
there is no CUDA device (CI); the rest of the suite runs on CUDA there too (``train.device: auto``)."""

import pytest
import torch

from conftest import small_config
from selfdistill.engine import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_every_networks_weights_file_is_saved_from_the_cpu(tmp_path):
    out = tmp_path / "run"
    metrics = train(small_config(method={"name": "dml"}, train={"epochs": 1, "device": "cuda"}), out)
    assert metrics["device"].startswith("cuda")
    for name in ("model.pt", "peer1.pt"):
        state = torch.load(out / name, weights_only=True)  # no map_location: as a user on a CPU machine would
        assert state and all(t.device.type == "cpu" for t in state.values()), name
