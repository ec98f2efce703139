"""selfdistill: knowledge distillation centred on self-distillation (DLB, LightSKD and friends)."""

__version__ = "0.1.0"

from .config import Config, resolve  # noqa: E402
from .engine import Trainer, train  # noqa: E402
from .losses import cross_entropy, kd_kl  # noqa: E402
from .methods import DLB, Batch, Outputs, build_method  # noqa: E402
from .models import FeatureTaps, build_model  # noqa: E402
from .plugin import DLBHelper  # noqa: E402

__all__ = ["Batch", "Config", "DLB", "DLBHelper", "FeatureTaps", "Outputs", "Trainer", "build_method", "build_model",
           "cross_entropy", "kd_kl", "resolve", "train"]
