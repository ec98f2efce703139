"""Pure loss functions shared by every method."""

from .kd import cross_entropy, kd_kl

__all__ = ["cross_entropy", "kd_kl"]
