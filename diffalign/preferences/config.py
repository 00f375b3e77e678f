"""The ``[data]`` config section: where preference examples come from and how they are drawn."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from diffalign.config import ConfigError, register_section

from .batch import KINDS


@register_section("data")
@dataclass
class DataConfig:
    #: a Hugging Face dataset (hub id or local folder), a parquet / CSV / JSONL file, or a folder of them
    source: str = ""
    #: auto: from the columns; pickapic: caption, jpg_0, jpg_1, label_0, label_1; kto_csv: file_path, caption,
    #: label; manifest: JSONL/CSV of local files (see diffalign.preferences.sources)
    format: Literal["auto", "pickapic", "kto_csv", "manifest"] = "auto"
    #: the kind of example (pairs, labels, winners, experts); empty: the algorithm's
    kind: str = ""
    split: str = "train"
    #: examples per process and epoch
    examples_per_epoch: int = 32
    #: labels kind: fraction of desirable examples drawn (Diffusion-KTO's positive_ratio); empty: as in the data
    positive_ratio: float | None = None
    #: probability that an example's prompt is replaced by "" (Diffusion-DPO: 0.2)
    prompt_dropout: float = 0.0
    #: keep the VAE latents of every decoded example in memory (encode once)
    cache_latents: bool = False
    #: resize media to this square size; empty: as stored (must then match the model's resolution)
    resolution: int | None = None
    #: use only the first N rows of the source
    max_examples: int | None = None

    def validate(self) -> None:
        if self.kind and self.kind not in KINDS:
            raise ConfigError(f"data.kind = {self.kind!r} is unknown; kinds: {', '.join(KINDS)}")
        if self.examples_per_epoch <= 0:
            raise ConfigError(f"data.examples_per_epoch must be positive, got {self.examples_per_epoch}")
        if self.positive_ratio is not None and not 0 < self.positive_ratio < 1:
            raise ConfigError(f"data.positive_ratio must be in (0, 1), got {self.positive_ratio}")
        if not 0 <= self.prompt_dropout < 1:
            raise ConfigError(f"data.prompt_dropout must be in [0, 1), got {self.prompt_dropout}")
        if self.resolution is not None and self.resolution <= 0:
            raise ConfigError(f"data.resolution must be positive, got {self.resolution}")
        if self.max_examples is not None and self.max_examples <= 0:
            raise ConfigError(f"data.max_examples must be positive, got {self.max_examples}")
