"""Trainers: one loop on ``accelerate`` (:class:`Trainer`) and one small file per algorithm.

>>> from diffalign.training import AWMTrainer
>>> trainer = AWMTrainer("awm_shapes", overrides=["run.epochs=10"])   # doctest: +SKIP
>>> trainer.train(); trainer.evaluate()                                # doctest: +SKIP
"""
from .algorithms import ALGORITHMS, AWM, DDPO, Algorithm, FlowGRPO, register_algorithm
from .trainer import AWMTrainer, DDPOTrainer, FlowGRPOTrainer, Trainer, TrainingDivergedError, recipe_path

__all__ = [
    "ALGORITHMS", "AWM", "AWMTrainer", "Algorithm", "DDPO", "DDPOTrainer", "FlowGRPO", "FlowGRPOTrainer",
    "Trainer", "TrainingDivergedError", "recipe_path", "register_algorithm",
]
