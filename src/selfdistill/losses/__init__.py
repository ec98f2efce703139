"""Pure loss functions shared by every method."""

from .dist import dist_parts, pearson
from .dkd import dkd_parts, drop_target, split_log_probs
from .dml import official_dml_kl
from .kd import cross_entropy, ensemble_probs, kd_kl, kl_to_target
from .nkd import nkd_parts
from .sp import similarity, sp_loss

__all__ = ["cross_entropy", "dist_parts", "dkd_parts", "drop_target", "ensemble_probs", "kd_kl", "kl_to_target",
           "nkd_parts", "official_dml_kl", "pearson", "similarity", "split_log_probs", "sp_loss"]
