"""Pruning engine: channel criteria (one-pass weight-permutation importance, Torch-Pruning's
magnitude, BN-scale and Taylor, ThiNet, CURL, AutoPruner), contribution rates, aligned keep
counts and physical pruning through Torch-Pruning's dependency graph."""
from edgecompress.pruning.allocation import ALLOCATIONS, contribution_rates, keep_counts
from edgecompress.pruning.criteria import CRITERIA
from edgecompress.pruning.groups import PrunableGroup, find_groups
from edgecompress.pruning.importance import channel_importance, per_channel_loop
from edgecompress.pruning.plan import PruningPlan, prune_model
from edgecompress.training.evaluation import recalibrate_bn

__all__ = ["ALLOCATIONS", "CRITERIA", "PrunableGroup", "PruningPlan", "channel_importance",
           "contribution_rates", "find_groups", "keep_counts", "per_channel_loop", "prune_model",
           "recalibrate_bn"]
from edgecompress.pruning import autopruner, curl, thinet  # noqa: E402,F401  registers criteria "autopruner", "curl", "thinet"
