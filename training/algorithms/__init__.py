"""Algorithms: one small file each; importing this package registers them (and their config sections)."""
from .base import ALGORITHMS, Algorithm, clipped_policy_loss, register_algorithm
from .awm import AWM, AWMConfig
from .backprop import AlignProp, AlignPropConfig, DRaFT, DRaFTConfig, ReFL, ReFLConfig, RewardBackprop
from .ddpo import DDPO, DDPOConfig
from .dpo import DiffusionDPO, DPOConfig
from .dro import DRO, DROConfig
from .find import FIND, FINDConfig
from .flow_grpo import FlowGRPO, FlowGRPOConfig
from .ipo import IPO, IPOConfig
from .kto import DiffusionKTO, KTOConfig
from .pool import CheckpointPool
from .preference import PreferenceAlgorithm
from .seppo import SePPO, SePPOConfig
from .smpo import SmPO, SmPOConfig

__all__ = [
    "ALGORITHMS", "AWM", "AWMConfig", "Algorithm", "AlignProp", "AlignPropConfig", "DRaFT", "DRaFTConfig",
    "ReFL", "ReFLConfig", "RewardBackprop", "CheckpointPool", "DDPO", "DDPOConfig", "DPOConfig", "DRO",
    "DROConfig", "DiffusionDPO", "DiffusionKTO", "FIND", "FINDConfig", "FlowGRPO", "FlowGRPOConfig", "IPO", "IPOConfig",
    "KTOConfig", "PreferenceAlgorithm",
    "SePPO", "SePPOConfig", "SmPO", "SmPOConfig",
    "clipped_policy_loss", "register_algorithm",
]
