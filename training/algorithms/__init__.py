"""Algorithms: one small file each; importing this package registers them (and their config sections)."""
from .base import ALGORITHMS, Algorithm, clipped_policy_loss, register_algorithm
from .awm import AWM, AWMConfig
from .ddpo import DDPO, DDPOConfig
from .dpo import DiffusionDPO, DPOConfig
from .flow_grpo import FlowGRPO, FlowGRPOConfig
from .kto import DiffusionKTO, KTOConfig
from .preference import PreferenceAlgorithm
from .smpo import SmPO, SmPOConfig

__all__ = [
    "ALGORITHMS", "AWM", "AWMConfig", "Algorithm", "DDPO", "DDPOConfig", "DPOConfig", "DiffusionDPO",
    "DiffusionKTO", "FlowGRPO", "FlowGRPOConfig", "KTOConfig", "PreferenceAlgorithm", "SmPO", "SmPOConfig",
    "clipped_policy_loss", "register_algorithm",
]
