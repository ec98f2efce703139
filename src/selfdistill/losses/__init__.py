"""Pure loss functions shared by every method."""

from .kd import cross_entropy, kd_kl, kl_to_target

__all__ = ["cross_entropy", "kd_kl", "kl_to_target"]
