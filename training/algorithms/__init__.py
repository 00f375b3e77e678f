"""Algorithms: one small file each; importing this package registers them (and their config sections)."""
from .base import ALGORITHMS, Algorithm, clipped_policy_loss, register_algorithm
from .awm import AWM, AWMConfig
from .ddpo import DDPO, DDPOConfig
from .flow_grpo import FlowGRPO, FlowGRPOConfig

__all__ = [
    "ALGORITHMS", "AWM", "AWMConfig", "Algorithm", "DDPO", "DDPOConfig", "FlowGRPO", "FlowGRPOConfig",
    "clipped_policy_loss", "register_algorithm",
]
