"""Architectures of the two ShapesWorld default models, as stock diffusers pipelines.

* ``shapes-sd``: :class:`~diffusers.StableDiffusionPipeline` = small :class:`~diffusers.AutoencoderKL`
  (factor 4: 32×32 RGB <-> 4×8×8 latents) + small :class:`~transformers.CLIPTextModel` on the shipped
  CLIP BPE tokenizer + :class:`~diffusers.UNet2DConditionModel` (epsilon prediction) +
  :class:`~diffusers.DDIMScheduler`.
* ``shapes-flow``: :class:`~diffusers.StableDiffusion3Pipeline` = the same autoencoder design + the
  same small CLIP encoder (with projection) saved as both ``text_encoder`` and ``text_encoder_2``
  + a small :class:`~diffusers.SD3Transformer2DModel` (MMDiT, rectified flow) +
  :class:`~diffusers.FlowMatchEulerDiscreteScheduler`; no T5 (``text_encoder_3 = None``: the
  pipeline then feeds ``max_sequence_length`` zero tokens in its place).

Loading ``shapes-flow`` with stock diffusers: ``StableDiffusion3Pipeline.from_pretrained(path,
text_encoder_3=None, tokenizer_3=None)`` (as for any SD3 checkpoint without T5: diffusers 0.42 does not
read the ``[null, null]`` entries of ``model_index.json`` back as None by itself, see
:func:`null_component_kwargs`). ``shapes-sd`` loads with a plain ``from_pretrained(path)``.

Weights are stored in float16 on disk (the configs keep float32, so everything loads in float32);
this halves the folders, whose bulk is the 49408-row token embedding of the CLIP vocabulary.
The default sampling settings live next to the weights in ``diffalign_defaults.json``
(:func:`read_defaults`).
"""
from __future__ import annotations

import inspect
import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diffalign.assets_path import tokenizer_path
from diffalign.errors import read_json

from .world import IMAGE_SIZE

DEFAULTS_FILE = "diffalign_defaults.json"
MODEL_KINDS: tuple[str, ...] = ("sd", "flow")
#: shipped folder name (under ``assets/models``) per model kind
SHIPPED_NAMES: dict[str, str] = {"sd": "shapes-sd", "flow": "shapes-flow"}
_VOCAB_SIZE = 49408
_BOS, _EOS = 49406, 49407
_CONTEXT_LENGTH = 77


@dataclass(frozen=True)
class ModelSizes:
    """Every size of both models; :data:`DEFAULT_SIZES` ships, :data:`TINY_SIZES` is for tests."""

    image_size: int = IMAGE_SIZE
    vae_channels: tuple[int, ...] = (16, 32, 32)  # 3 blocks: downsampling factor 4
    latent_channels: int = 4
    text_hidden: int = 40
    text_layers: int = 3
    text_heads: int = 4
    unet_channels: tuple[int, ...] = (32, 64)
    unet_heads: int = 4
    flow_layers: int = 4
    flow_heads: int = 2
    flow_head_dim: int = 32
    flow_patch: int = 1

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)

    @property
    def latent_size(self) -> int:
        if self.image_size % (self.vae_factor * self.flow_patch):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by the autoencoder factor {self.vae_factor} "
                f"times the transformer patch {self.flow_patch}"
            )
        return self.image_size // self.vae_factor

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelSizes":
        known = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown model size field(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**known)


DEFAULT_SIZES = ModelSizes()
TINY_SIZES = ModelSizes(
    vae_channels=(8, 16, 16), text_hidden=16, text_layers=2, text_heads=2, unet_channels=(16, 32), unet_heads=2,
    flow_layers=2, flow_heads=2, flow_head_dim=8,
)

#: default sampling settings per model kind (``diffalign_defaults.json``); timed on a 2-core CPU
DEFAULT_SAMPLING: dict[str, dict[str, Any]] = {
    "sd": {"num_inference_steps": 20, "guidance_scale": 4.0},
    "flow": {"num_inference_steps": 12, "guidance_scale": 4.0, "max_sequence_length": 256},
}


# ------------------------------------------------------------------------------------ components
def build_autoencoder(sizes: ModelSizes) -> "torch.nn.Module":
    from diffusers import AutoencoderKL

    n = len(sizes.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(sizes.vae_channels),
        layers_per_block=1,
        latent_channels=sizes.latent_channels,
        norm_num_groups=min(32, sizes.vae_channels[0]),
        sample_size=sizes.image_size,
        shift_factor=0.0,  # set from the data by the pretraining; StableDiffusion3Pipeline needs a number
    )


def build_text_encoder(sizes: ModelSizes, with_projection: bool) -> "torch.nn.Module":
    """A small CLIP text transformer over the full CLIP vocabulary (so the shipped tokenizer fits)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=_VOCAB_SIZE,
        hidden_size=sizes.text_hidden,
        intermediate_size=4 * sizes.text_hidden,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.text_heads,
        max_position_embeddings=_CONTEXT_LENGTH,
        projection_dim=sizes.text_hidden,
        bos_token_id=_BOS,
        eos_token_id=_EOS,
        pad_token_id=_EOS,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def build_unet(sizes: ModelSizes) -> "torch.nn.Module":
    from diffusers import UNet2DConditionModel

    n = len(sizes.unet_channels)
    return UNet2DConditionModel(
        sample_size=sizes.latent_size,
        in_channels=sizes.latent_channels,
        out_channels=sizes.latent_channels,
        block_out_channels=tuple(sizes.unet_channels),
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        layers_per_block=1,
        cross_attention_dim=sizes.text_hidden,
        attention_head_dim=sizes.unet_heads,
        norm_num_groups=min(32, sizes.unet_channels[0]),
    )


def build_transformer(sizes: ModelSizes) -> "torch.nn.Module":
    """MMDiT whose context is the two CLIP encoders' penultimate states side by side (SD3's layout)."""
    from diffusers import SD3Transformer2DModel

    inner = sizes.flow_heads * sizes.flow_head_dim
    return SD3Transformer2DModel(
        sample_size=sizes.latent_size,
        patch_size=sizes.flow_patch,
        in_channels=sizes.latent_channels,
        out_channels=sizes.latent_channels,
        num_layers=sizes.flow_layers,
        attention_head_dim=sizes.flow_head_dim,
        num_attention_heads=sizes.flow_heads,
        joint_attention_dim=2 * sizes.text_hidden,
        caption_projection_dim=inner,
        pooled_projection_dim=2 * sizes.text_hidden,
        pos_embed_max_size=sizes.latent_size // sizes.flow_patch,
    )


def build_ddim_scheduler():
    """Stable Diffusion 1.x's betas (scaled linear 0.00085-0.012) with trailing timesteps (the first
    DDIM step starts at t = 999). DDPM's linear 0.0001-0.02 betas end at SNR ~4e-5, where an epsilon
    model's x0 estimate amplifies its error ~160x; measured: at equal training, DDIM samples were noise."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,  # unused by "trailing"; 1 keeps StableDiffusionPipeline from flagging the config
        timestep_spacing="trailing",
    )


def build_flow_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def load_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(tokenizer_path()))


def assemble_pipeline(kind: str, vae, text_encoder, denoiser, tokenizer=None):
    """The stock pipeline object of ``kind`` around trained components (text encoder used twice for flow)."""
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
    if kind == "sd":
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=denoiser, scheduler=build_ddim_scheduler(),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    if kind == "flow":
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline(
            transformer=denoiser, scheduler=build_flow_scheduler(), vae=vae,
            text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder, tokenizer_2=tokenizer,
            text_encoder_3=None, tokenizer_3=None,
        )
    raise ValueError(f"unknown model kind {kind!r}; expected one of {MODEL_KINDS}")


def flow_t5_length() -> int:
    """The number of zero T5 tokens ``StableDiffusion3Pipeline`` appends by default (``max_sequence_length``)."""
    from diffusers import StableDiffusion3Pipeline

    return int(inspect.signature(StableDiffusion3Pipeline.__call__).parameters["max_sequence_length"].default)


# ----------------------------------------------------------------------------- latent convention
def image_to_latents(kind: str, vae, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> the latents the pipeline of ``kind`` denoises (posterior mode, scaled as it decodes)."""
    latents = vae.encode(images * 2 - 1).latent_dist.mode()
    shift = (vae.config.shift_factor or 0.0) if kind == "flow" else 0.0  # SD 1.x pipelines have no shift
    return (latents - shift) * vae.config.scaling_factor


def latents_to_image(kind: str, vae, latents: torch.Tensor) -> torch.Tensor:
    shift = (vae.config.shift_factor or 0.0) if kind == "flow" else 0.0
    return (vae.decode(latents / vae.config.scaling_factor + shift).sample / 2 + 0.5).clamp(0, 1)


# ------------------------------------------------------------------------------------- storage
def store_float16(folder: str | Path) -> None:
    """Rewrite every ``*.safetensors`` under ``folder`` in float16 (configs untouched: loads stay float32)."""
    from safetensors.torch import load_file, save_file

    for path in Path(folder).rglob("*.safetensors"):
        tensors = load_file(str(path))
        save_file({k: (v.half() if v.is_floating_point() else v) for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def folder_size(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def null_component_kwargs(folder: str | Path) -> dict[str, None]:
    """``{name: None}`` for every component ``model_index.json`` stores as ``[null, null]``.

    Pass these to ``DiffusionPipeline.from_pretrained``: diffusers drops null entries on load and
    then refuses the folder for a required component (``text_encoder_3`` of SD3).
    """
    index = read_json(Path(folder) / "model_index.json", "the pipeline's model index")
    return {k: None for k, v in index.items() if isinstance(v, list) and len(v) == 2 and v[0] is None and v[1] is None}


def read_defaults(folder: str | Path) -> dict[str, Any]:
    """Default sampling kwargs for the pipeline in ``folder`` ({} when the folder has none)."""
    path = Path(folder) / DEFAULTS_FILE
    return read_json(path, "the model's sampling defaults") if path.exists() else {}


def save_pipeline(pipe, folder: str | Path, kind: str, sizes: ModelSizes, float16: bool = True, extra_defaults: dict[str, Any] | None = None) -> Path:
    """``save_pretrained`` + float16 storage + the defaults file; replaces ``folder`` atomically."""
    defaults = {"height": sizes.image_size, "width": sizes.image_size, **DEFAULT_SAMPLING[kind], **(extra_defaults or {})}
    return save_pipeline_folder(pipe, folder, defaults, float16=float16, shipped_clip_tokenizer=True)


def save_pipeline_folder(pipe, folder: str | Path, defaults: dict[str, Any], float16: bool = True, shipped_clip_tokenizer: bool = False) -> Path:
    """``save_pretrained`` into a staging folder, float16 storage, ``defaults`` as :data:`DEFAULTS_FILE`, then
    replace ``folder`` atomically. ``shipped_clip_tokenizer``: store the shipped vocab/merges files as the
    ``tokenizer``/``tokenizer_2`` folders, not a regenerated tokenizer.json."""
    folder = Path(folder)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(str(staging), safe_serialization=True)
    if shipped_clip_tokenizer:
        for name in ("tokenizer", "tokenizer_2"):
            if (staging / name).is_dir():
                shutil.rmtree(staging / name)
                shutil.copytree(tokenizer_path(), staging / name)
    if float16:
        store_float16(staging)
    (staging / DEFAULTS_FILE).write_text(json.dumps(defaults, indent=2) + "\n")
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        staging.rename(folder)
        shutil.rmtree(old)
    else:
        staging.rename(folder)
    return folder


# ----------------------------------------------------------------- training-time MMDiT attention
class RepeatedTokenJointAttnProcessor:
    """Joint attention where the *last* context token stands for ``repeats`` identical tokens.

    With ``text_encoder_3 = None``, ``StableDiffusion3Pipeline`` appends ``max_sequence_length``
    all-zero T5 tokens to the context. They enter identical and stay identical through every
    block (each token's update depends only on itself, the timestep and the shared keys; the MMDiT
    adds no positional embedding to context tokens), so in every softmax ``N`` equal keys weigh as
    one key with ``log N`` added to its logit:

        softmax([s_1..s_m, s, ..., s]) -> softmax([s_1..s_m, s + log N]) (same weighted values).

    Training with one such token instead of 256 gives the stock model's exact output at a fraction
    of the cost (checked against the stock processor in ``tests/test_pretrain.py``).
    """

    def __init__(self, repeats: int):
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.log_repeats = math.log(repeats)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if encoder_hidden_states is None:
            raise ValueError("RepeatedTokenJointAttnProcessor needs the context stream (joint attention)")
        batch, n_image = hidden_states.shape[:2]
        heads = attn.heads

        def split(x):
            return x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states))
        cq, ck, cv = split(attn.add_q_proj(encoder_hidden_states)), split(attn.add_k_proj(encoder_hidden_states)), split(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        if attn.norm_added_q is not None:
            cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
        q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
        bias = torch.zeros(1, 1, 1, k.shape[2], dtype=q.dtype, device=q.device)
        bias[..., -1] = self.log_repeats
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(batch, -1, heads * out.shape[-1])
        image_out, context_out = out[:, :n_image], out[:, n_image:]
        if not attn.context_pre_only:
            context_out = attn.to_add_out(context_out)
        image_out = attn.to_out[1](attn.to_out[0](image_out))
        return image_out, context_out


__all__ = [
    "DEFAULTS_FILE", "DEFAULT_SAMPLING", "DEFAULT_SIZES", "MODEL_KINDS", "ModelSizes", "RepeatedTokenJointAttnProcessor",
    "SHIPPED_NAMES", "TINY_SIZES", "assemble_pipeline", "build_autoencoder", "build_ddim_scheduler", "build_flow_scheduler",
    "build_text_encoder", "build_transformer", "build_unet", "flow_t5_length", "folder_size", "image_to_latents",
    "latents_to_image", "load_tokenizer", "null_component_kwargs", "read_defaults", "save_pipeline", "save_pipeline_folder", "store_float16",
]
