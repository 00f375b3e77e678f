"""What the offline preference trainers share (Diffusion-DPO, Diffusion-KTO, SmPO; later SePPO, DRO, IPO).

A :class:`PreferenceAlgorithm` collects by reading the ``[data]`` source (:mod:`diffalign.preferences`):
each epoch is ``data.examples_per_epoch`` examples per process from the seeded, distributed, resumable
loader (its position is part of the algorithm's checkpoint state). Media become clean latents ``x0``
through the adapter's autoencoder (once, with ``data.cache_latents``), prompts become conditioning without
CFG; prompt dropout is the loader's. Each example gets its own generator, seeded by
``(seed, algorithm, epoch, inner epoch, global example index)``, for its timestep and noise, so the update
does not depend on how examples are split over processes or train batches; a pair shares one timestep
and one noise (the variance reduction of Diffusion-DPO's code). One backward pass per train batch.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from diffalign.config import ConfigError

from .base import Algorithm

__all__ = ["PreferenceAlgorithm", "pair_layout", "split_pairs"]


def pair_layout(x: torch.Tensor) -> torch.Tensor:
    """``B×2×...`` (preferred, rejected) -> ``2B×...``: all preferred first, then all rejected."""
    return torch.cat([x[:, 0], x[:, 1]])


def split_pairs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`pair_layout` on a ``[2B]`` tensor: ``(preferred [B], rejected [B])``."""
    half = x.shape[0] // 2
    return x[:half], x[half:]


class PreferenceAlgorithm(Algorithm):
    """Base of the trainers that learn from preference data; subclasses set ``data_kind``."""

    data_kind: ClassVar[str] = "pairs"
    needs_log_probs = False
    default_advantage_mode = None  # no rewards are collected, so no advantages
    drop_zero_refused = "it filters online advantages; preference data has none"

    def __init__(self, config, *, reference: str = "base", reads_data: bool = True):
        #: the model the loss compares to: ``"base"`` (the frozen model) or a snapshot name (IPO: the round's start)
        self.reference = reference
        #: False when another algorithm supplies the batches (IPO's rounds) and this one gives only the loss
        self.reads_data = reads_data
        super().__init__(config)

    @property
    def data_config(self):
        return self.config.section("data")

    def validate(self) -> None:
        super().validate()
        if not self.reads_data:
            return
        data = self.data_config
        if not data.source:
            raise ConfigError(f"data.source is not set: {self.name} trains on {self.data_kind} "
                              f"(a dataset, parquet/CSV/JSONL file or manifest; see `diffalign prefs build`)")
        if data.kind and data.kind != self.data_kind:
            raise ConfigError(f"data.kind = {data.kind!r}, but {self.name} trains on {self.data_kind!r}")

    def samples_per_epoch(self) -> int:
        return self.data_config.examples_per_epoch

    def samples_per_epoch_source(self) -> str:
        return f"data.examples_per_epoch {self.data_config.examples_per_epoch}"

    def micro_steps_per_batch(self) -> int:
        return 1

    # ------------------------------------------------------------------------------- data
    def setup(self, trainer) -> None:
        super().setup(trainer)
        if self.reads_data:
            self.loader = open_loader(self, self.data_config, self.data_kind)

    def collect(self, epoch: int):
        return next_encoded_batch(self, self.loader)

    def epoch_stats(self, batch) -> dict[str, Any]:
        stats: dict[str, Any] = {"skipped_rows": len(self.loader.skipped)}
        if batch.labels is not None:
            stats["label_mean"] = float(batch.labels.float().mean())
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {"data": self.loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("data") is not None:
            self.loader.load_state_dict(state["data"])

    # ----------------------------------------------------------------------- t and noise
    def draw_timesteps_and_noise(self, batch, epoch: int, inner_epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One timestep ``[B]`` and one noise ``B×L`` per example (a pair shares both), from its own generator."""
        gens = [self.generator("train", epoch, inner_epoch, int(i)) for i in batch.extras["sample_index"].tolist()]
        shape = batch.latents.shape[2:] if self.data_kind == "pairs" else batch.latents.shape[1:]
        noise = torch.stack([torch.randn(tuple(shape), generator=g) for g in gens])
        # one call per example: the flow families draw a whole batch from a single generator
        timesteps = torch.cat([self.adapter.sample_training_timesteps(1, generator=g).reshape(1) for g in gens])
        device = batch.latents.device
        return timesteps.to(device), noise.to(device)

    def micro_batches(self, batch, epoch: int, inner_epoch: int):
        timesteps, noise = self.draw_timesteps_and_noise(batch, epoch, inner_epoch)
        yield batch, timesteps, noise

    @staticmethod
    def paired_conditioning(batch) -> dict[str, Any]:
        """Conditioning for ``2B`` latents in :func:`pair_layout` order."""
        from diffalign.pipelines.base import cat_cond

        cond = batch.conditioning["cond"]
        return {"cond": cat_cond([cond, cond]), "uncond": None}


def open_loader(algorithm: Algorithm, data_config, kind: str, seed_name: str = "data"):
    """The seeded, distributed, resumable :class:`~diffalign.preferences.PreferenceLoader` of ``data_config``'s
    examples of ``kind`` (``data.kind`` when set), encoding media with the algorithm's adapter; its draws are
    seeded by ``(run.seed, seed_name)``."""
    from diffalign.preferences import PreferenceLoader, open_preferences

    from ..prompts import derive_seed

    acc = algorithm.trainer.accelerator
    adapter = algorithm.adapter

    def encode_media(media: torch.Tensor) -> torch.Tensor:
        """Media ``N×C×H×W`` (``N×T×C×H×W``) -> clean latents on CPU (the loader lays pairs out and caches)."""
        with torch.no_grad():
            return adapter.encode(media.to(adapter.device, torch.float32)).float().cpu()

    return PreferenceLoader(open_preferences(data_config, kind), data_config,
                            seed=derive_seed(algorithm.config.run.seed, seed_name), num_processes=acc.num_processes,
                            process_index=acc.process_index, encode=encode_media)


def next_encoded_batch(algorithm: Algorithm, loader):
    """The loader's next batch with clean latents and prompt conditioning (no CFG), on the training device."""
    batch = loader.next_batch()  # latents encoded by the loader (cached with data.cache_latents)
    batch.media = None
    with torch.no_grad():
        batch.conditioning = algorithm.adapter.encode_prompts(batch.prompts, do_cfg=False)
    # the loader's global draw position: the same per-example seed on any number of processes
    batch.extras["sample_index"] = batch.extras["draw_position"]
    return batch.to(algorithm.trainer.accelerator.device)
