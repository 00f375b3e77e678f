"""The trained result, for every command: a diffusers LoRA, or a run folder's final or saved weights.

Every command that samples a model (``diffalign sample``, ``diffalign eval``, ``diffalign prefs build``)
takes the same options (:func:`add_trained_model_arguments`):

* ``--model`` — the base model (hub id, folder, shipped name); defaults to the run's ``model.source``;
* ``--lora DIR`` — any diffusers-format LoRA (ours or another tool's), scaled by ``--lora-scale``;
* ``--run RUN_DIR`` — a folder written by ``diffalign train``: its ``final/`` weights, or with
  ``--checkpoint N`` the weights saved at epoch ``N`` (the EMA weights when the run evaluated with them,
  as ``final/`` holds);
* ``--noise-policy DIR`` — a learned initial-noise law (a FIND run's ``final/`` holding
  ``noise.safetensors``, the run folder itself, or the file), alone or with ``--lora``/``--run``.

Resolving (:func:`resolve_trained`) checks the files before any model loads; :meth:`TrainedWeights.check`
checks that the weights fit the loaded model (component, module names, shapes) before anything samples,
so a LoRA for another architecture is a one-line :class:`TrainedModelError` naming the folder and the
mismatch. :meth:`TrainedWeights.apply` then puts the weights on the adapter.

A run's ``final/`` also gets a model card (:func:`write_model_card`).

From Python::

    adapter = load_trained_model(run="runs/awm_shapes")
    rollout = adapter.sample(["a photo of a red circle"], steps=20)
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from diffalign.errors import UserError, read_json, read_text

from diffalign.registry import Registry

logger = logging.getLogger(__name__)

__all__ = [
    "NON_DENOISER_LOADERS",
    "TrainedModelError",
    "TrainedWeights",
    "add_trained_model_arguments",
    "load_from_args",
    "load_trained_model",
    "resolve_from_args",
    "resolve_trained",
    "write_model_card",
]

LORA_FILE = "pytorch_lora_weights.safetensors"
DENOISER_FILE = "denoiser.safetensors"
CHECKPOINT_WEIGHTS = "weights.safetensors"
CARD_FILE = "README.md"
NOISE_POLICY_FILE = "noise.safetensors"

#: Loaders for trainables that are not the denoiser (keys ``prefix/name`` in a checkpoint, or
#: ``final/prefix.safetensors``), e.g. a learned noise distribution (``noise/mu``). A loader is
#: ``loader(adapter, tensors: dict[str, Tensor]) -> None`` with the prefix stripped from the names; an optional
#: ``loader.check(adapter, tensors)`` checks the fit without changing the adapter. Both raise ``ValueError``.
NON_DENOISER_LOADERS: Registry[Callable[..., None]] = Registry("non-denoiser trainable", entry_point_group="diffalign.trainables")

# "<component>.<module path>.<lora marker>..." in diffusers' peft format (and the older lora.down/up one)
_LORA_KEY = re.compile(r"^(?P<component>[^.]+)\.(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora\.down|lora\.up)(\.[^.]+)?\.weight$")


class TrainedModelError(UserError):
    """Trained weights that are missing or do not fit the model; the message names the folder and the mismatch."""


def _shipped_or_path(source: str) -> str:
    from diffalign.pipelines import shipped_model_path

    path = shipped_model_path(source)
    return str(path) if path is not None else source


def _read_run_config(run: Path) -> dict[str, Any]:
    path = run / "config.toml"
    if not path.is_file():
        raise TrainedModelError(f"{run}: not a run folder (no config.toml; `diffalign train` writes one)")
    try:
        return tomllib.loads(read_text(path, "run config", error=TrainedModelError))
    except tomllib.TOMLDecodeError as err:
        raise TrainedModelError(f"{path}: not valid TOML ({err})") from None


def _epoch_folder(run: Path, epoch: int) -> Path:
    return run / "checkpoints" / f"epoch_{epoch:06d}"


def _saved_epochs(run: Path) -> list[int]:
    from diffalign.training.checkpoint import list_checkpoints

    return [int(p.name.split("_")[1]) for p in list_checkpoints(run / "checkpoints")]


@dataclass
class TrainedWeights:
    """Weights to put on a base model, resolved and file-checked; see :func:`resolve_trained`.

    ``kind`` is ``"lora"`` (a diffusers LoRA folder, loaded with ``load_lora_weights``), ``"lora_state"``
    (a checkpoint's peft LoRA parameters by name), ``"denoiser_state"`` (full fine-tune parameters by name)
    or ``"base"`` (the denoiser unchanged; only other trainables in ``extra_files``, such as a noise law).
    """

    base: str
    kind: str
    path: Path
    label: str
    lora_scale: float = 1.0
    weight_name: str | None = None
    run: Path | None = None
    checkpoint: int | None = None
    run_config: dict[str, Any] = field(default_factory=dict)
    ema_file: Path | None = None
    extra_files: dict[str, Path] = field(default_factory=dict)
    _state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ reading
    def _tensors(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        if self._state is None:
            try:
                self._state = load_file(str(self.path))
            except Exception as err:  # safetensors raises its own error types for corrupt files
                raise TrainedModelError(f"{self.path}: cannot read the weights ({err})") from None
        return self._state

    def _denoiser_and_other(self) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
        """The denoiser's tensors and, by prefix, those of other trainables (``prefix/name`` keys)."""
        denoiser, other = {}, {}
        for key, value in (self._tensors() if self.kind not in ("base", "lora") else {}).items():
            if "/" in key:
                prefix, name = key.split("/", 1)
                other.setdefault(prefix, {})[name] = value
            else:
                denoiser[key] = value
        from safetensors.torch import load_file

        for prefix, path in self.extra_files.items():
            try:
                other.setdefault(prefix, {}).update(load_file(str(path)))
            except Exception as err:  # safetensors raises its own error types for corrupt files
                raise TrainedModelError(f"{path}: cannot read the weights ({_one_line(err)})") from None
        return denoiser, other

    def _lora_options(self) -> dict[str, Any]:
        model = self.run_config.get("model", {})
        return {"rank": int(model.get("lora_rank", 4)), "alpha": model.get("lora_alpha"),
                "target_modules": list(model.get("lora_targets") or []) or None}

    def _use_ema(self) -> bool:
        return (self.ema_file is not None and bool(self.run_config.get("train", {}).get("ema", False))
                and bool(self.run_config.get("eval", {}).get("use_ema", True)))

    # ------------------------------------------------------------------ checking
    def check(self, adapter) -> None:
        """Raise :class:`TrainedModelError` unless the weights fit ``adapter``'s model (no weights change)."""
        denoiser = adapter.trainable_denoiser
        if self.kind == "lora":
            self._check_diffusers_lora(adapter)
            self._check_other(self._denoiser_and_other()[1] if self.extra_files else {}, adapter)
            return
        state, other = self._denoiser_and_other()
        self._check_other(other, adapter)
        if not state and other:  # a frozen model with other trainables (FIND's noise law)
            return
        if self.kind == "denoiser_state":
            _check_named_tensors(self.path, state, dict(denoiser.named_parameters()), adapter)
        else:  # a checkpoint's LoRA parameters: compare against the base modules they wrap
            modules = dict(denoiser.named_modules())
            for key, value in state.items():
                match = re.match(r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B)\.[^.]+\.weight$", key)
                if match is None:
                    raise TrainedModelError(f"{self.path}: {key!r} is not a LoRA parameter, but the run trained a LoRA "
                                            "(model.lora = true)")
                _check_lora_module(self.path, key, match["module"], match["kind"], value, modules,
                                   adapter.denoiser_name, adapter)

    def _check_other(self, other: Mapping[str, Any], adapter=None) -> None:
        unknown = [p for p in other if p not in NON_DENOISER_LOADERS]
        if unknown:
            raise TrainedModelError(
                f"{self.path}: holds trainables that are not the denoiser ({', '.join(sorted(unknown))}); "
                "this version cannot load them (register a loader in diffalign.trained.NON_DENOISER_LOADERS)")
        for prefix, tensors in other.items():
            check = getattr(NON_DENOISER_LOADERS.get(prefix), "check", None)
            if adapter is not None and check is not None:
                try:
                    check(adapter, tensors)
                except ValueError as err:
                    raise TrainedModelError(f"{self.extra_files.get(prefix, self.path)}: {err}") from None

    def _check_diffusers_lora(self, adapter) -> None:
        pipe = adapter.pipe
        folder = self.path
        try:
            loaded = type(pipe).lora_state_dict(str(folder), weight_name=self.weight_name, return_lora_metadata=True)
        except Exception as err:  # diffusers raises ValueError/OSError/EnvironmentError variants
            raise TrainedModelError(f"{folder}: not a readable diffusers LoRA ({_one_line(err)})") from None
        state = loaded[0] if isinstance(loaded, tuple) else loaded
        if not state:
            raise TrainedModelError(f"{folder}: the LoRA file holds no weights")
        components = {name for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)}
        pipe_name = type(pipe).__name__
        checked = 0
        for key, value in state.items():
            match = _LORA_KEY.match(key)
            if match is None:
                continue  # other layouts (alphas, A1111 leftovers): diffusers converts or rejects them itself
            component = match["component"]
            if component not in components:
                raise TrainedModelError(
                    f"{folder}: LoRA for another architecture: its weights are for '{component}' "
                    f"(e.g. {key}), but {pipe_name} has {', '.join(sorted(components))} "
                    f"(denoiser '{adapter.denoiser_name}')")
            modules = dict(getattr(pipe, component).named_modules())
            _check_lora_module(folder, key, match["module"], match["kind"], value, modules, component, adapter)
            checked += 1
        if checked == 0:
            raise TrainedModelError(f"{folder}: no LoRA weights in diffusers' format (keys such as "
                                    f"'{adapter.denoiser_name}.<module>.lora_A.weight'); e.g. {next(iter(state))!r}")

    # ------------------------------------------------------------------ applying
    def apply(self, adapter):
        """Put the weights on ``adapter`` (checked first) and return it, in eval mode."""
        self.check(adapter)
        denoiser = adapter.trainable_denoiser
        if self.kind == "lora":
            try:
                adapter.load_lora(self.path, weight_name=self.weight_name)
            except Exception as err:
                raise TrainedModelError(f"{self.path}: diffusers could not load the LoRA ({_one_line(err)})") from None
            if self.lora_scale != 1.0:
                adapter.pipe.set_adapters([adapter.lora_adapter_name], adapter_weights=[self.lora_scale])
        elif self.kind == "base" or not self._denoiser_and_other()[0]:
            self._apply_other(adapter, self._denoiser_and_other()[1])
        else:
            state, other = self._denoiser_and_other()
            if self.kind == "lora_state":
                if adapter.lora_config is None:
                    options = self._lora_options()
                    adapter.add_lora(rank=options["rank"], alpha=options["alpha"], target_modules=options["target_modules"],
                                     init=True)
                params = dict(denoiser.named_parameters())
                missing = [n for n in params if "lora_" in n and f".{adapter.lora_adapter_name}." in n and n not in state]
                unknown = [n for n in state if n not in params]
                if missing or unknown:
                    what = f"the model's LoRA has {missing[0]!r} that the file lacks" if missing else f"{unknown[0]!r} has no LoRA layer in the model"
                    raise TrainedModelError(
                        f"{self.path}: the LoRA does not fit the model built from config.toml (rank "
                        f"{self._lora_options()['rank']}): {what}")
            if self._use_ema():
                state = self._ema_state(state, denoiser)
            with torch.no_grad():
                params = dict(denoiser.named_parameters())
                for name, value in state.items():
                    params[name].copy_(value.to(params[name].dtype))
            if self.kind == "lora_state" and self.lora_scale != 1.0:
                denoiser.set_adapters([adapter.lora_adapter_name], weights=[self.lora_scale])
            self._apply_other(adapter, other)
        if self.kind == "lora" and self.extra_files:
            self._apply_other(adapter, self._denoiser_and_other()[1])
        denoiser.requires_grad_(False)
        denoiser.eval()
        return adapter

    def _apply_other(self, adapter, other: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        for prefix, tensors in other.items():
            try:
                NON_DENOISER_LOADERS.get(prefix)(adapter, tensors)
            except TrainedModelError:
                raise
            except ValueError as err:
                raise TrainedModelError(f"{self.extra_files.get(prefix, self.path)}: {err}") from None

    def _ema_state(self, state: dict[str, torch.Tensor], denoiser: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The checkpoint's EMA weights by name: the trainer keeps the EMA shadows in its parameter order,
        which is the denoiser's parameter order restricted to the trained names."""
        data = torch.load(self.ema_file, map_location="cpu", weights_only=True)
        shadows = data.get("shadow_params") if isinstance(data, dict) else None
        names = [n for n, _ in denoiser.named_parameters() if n in state]
        if shadows is None or len(shadows) != len(names):
            raise TrainedModelError(f"{self.ema_file}: EMA state does not match the {len(names)} trained parameters "
                                    f"(holds {len(shadows) if shadows is not None else 'no'} shadow tensors)")
        out = {}
        for name, shadow in zip(names, shadows):
            if tuple(shadow.shape) != tuple(state[name].shape):
                raise TrainedModelError(f"{self.ema_file}: EMA tensor for {name} has shape {tuple(shadow.shape)}, "
                                        f"the weights {tuple(state[name].shape)}")
            out[name] = shadow
        return out


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _check_lora_module(folder: Path, key: str, module_name: str, kind: str, value: torch.Tensor,
                       modules: Mapping[str, torch.nn.Module], component: str, adapter) -> None:
    """A LoRA tensor fits when its base module exists and ``A``'s input / ``B``'s output width match it."""
    module = modules.get(module_name)
    base = getattr(module, "base_layer", module)  # a module already wrapped by peft
    weight = getattr(base, "weight", None)
    if module is None or weight is None:
        raise TrainedModelError(f"{folder}: LoRA does not fit the model: {key} targets '{component}.{module_name}', "
                                f"which {_model_name(adapter)} does not have")
    dim = 1 if kind in ("lora_A", "lora.down") else 0
    if value.ndim < 2 or value.shape[dim] != weight.shape[dim]:
        side = "input" if dim == 1 else "output"
        raise TrainedModelError(
            f"{folder}: LoRA does not fit the model: {key} has {side} width {value.shape[dim] if value.ndim >= 2 else '?'}, "
            f"'{component}.{module_name}' of {_model_name(adapter)} has {weight.shape[dim]}")


def _check_named_tensors(path: Path, state: Mapping[str, torch.Tensor], params: Mapping[str, torch.nn.Parameter], adapter) -> None:
    if not state:
        raise TrainedModelError(f"{path}: holds no denoiser weights")
    for key, value in state.items():
        if key not in params:
            raise TrainedModelError(f"{path}: {key!r} is not a parameter of {_model_name(adapter)}'s "
                                    f"{adapter.denoiser_name} (weights for another architecture?)")
        if tuple(value.shape) != tuple(params[key].shape):
            raise TrainedModelError(f"{path}: {key} has shape {tuple(value.shape)}, {_model_name(adapter)} has "
                                    f"{tuple(params[key].shape)}")


def _model_name(adapter) -> str:
    return f"the {type(adapter.pipe).__name__}"


# ---------------------------------------------------------------------------------- resolving
def resolve_trained(
    model: str | None = None,
    *,
    lora: str | Path | None = None,
    lora_scale: float = 1.0,
    run: str | Path | None = None,
    checkpoint: int | None = None,
    noise_policy: str | Path | None = None,
) -> TrainedWeights | None:
    """Check what the options name and return the weights to apply (``None``: the base model alone).

    Only files are read here (the run's ``config.toml``), so bad input fails before a model loads.
    """
    trained = _resolve_weights(model, lora=lora, lora_scale=lora_scale, run=run, checkpoint=checkpoint)
    if noise_policy is None:
        return trained
    path = resolve_noise_policy(noise_policy)
    if trained is None:
        if model is None:
            raise TrainedModelError(f"--noise-policy {noise_policy} needs --model (or --run RUN_DIR)")
        return TrainedWeights(base=model, kind="base", path=path, label=f"{model} + noise policy {path.parent}",
                              extra_files={"noise": path})
    trained.extra_files["noise"] = path
    trained.label += f" + noise policy {path.parent}"
    return trained


def resolve_noise_policy(path: str | Path) -> Path:
    """The ``noise.safetensors`` that ``--noise-policy`` names: the file, a folder holding it (a FIND run's
    ``final/``) or a run folder (its ``final/``); a one-line :class:`TrainedModelError` otherwise."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise TrainedModelError(f"--noise-policy {path}: not a .safetensors file")
        return path
    if not path.is_dir():
        raise TrainedModelError(f"--noise-policy {path}: folder not found")
    for candidate in (path / NOISE_POLICY_FILE, path / "final" / NOISE_POLICY_FILE):
        if candidate.is_file():
            return candidate
    raise TrainedModelError(f"--noise-policy {path}: no {NOISE_POLICY_FILE} (a find run's final/ folder holds one)")


def _resolve_weights(
    model: str | None,
    *,
    lora: str | Path | None,
    lora_scale: float,
    run: str | Path | None,
    checkpoint: int | None,
) -> TrainedWeights | None:
    import math

    if lora is not None and run is not None:
        raise TrainedModelError("give --lora or --run, not both")
    if checkpoint is not None and run is None:
        raise TrainedModelError("--checkpoint needs --run RUN_DIR")
    if not isinstance(lora_scale, (int, float)) or not math.isfinite(lora_scale):
        raise TrainedModelError(f"--lora-scale must be a finite number, got {lora_scale!r}")
    if lora is not None:
        if model is None:
            raise TrainedModelError(f"--lora {lora} needs --model (the base model the LoRA was trained on)")
        return _resolve_lora(model, Path(lora), float(lora_scale))
    if run is None:
        if lora_scale != 1.0:
            raise TrainedModelError("--lora-scale needs --lora or --run")
        return None
    return _resolve_run(model, Path(run), checkpoint, float(lora_scale))


def _resolve_lora(model: str, path: Path, scale: float) -> TrainedWeights:
    weight_name = None
    if path.is_file():
        if path.suffix != ".safetensors":
            raise TrainedModelError(f"{path}: a LoRA must be a .safetensors file or a folder holding one")
        path, weight_name = path.parent, path.name
    elif not path.is_dir():
        raise TrainedModelError(f"{path}: LoRA folder not found")
    elif not (path / LORA_FILE).is_file():
        if (path / "config.toml").is_file():
            raise TrainedModelError(f"{path}: a run folder, not a LoRA folder: use --run {path}")
        if (path / DENOISER_FILE).is_file():
            raise TrainedModelError(f"{path}: holds full fine-tune weights ({DENOISER_FILE}), not a LoRA: "
                                    f"load its run with --run RUN_DIR")
        files = sorted(p.name for p in path.glob("*.safetensors"))
        if len(files) != 1:
            found = f"it holds {', '.join(files)}; name one" if files else "no .safetensors file"
            raise TrainedModelError(f"{path}: missing {LORA_FILE} ({found})")
        weight_name = files[0]
    return TrainedWeights(base=model, kind="lora", path=path, weight_name=weight_name, lora_scale=scale,
                          label=f"{model} + LoRA {path}" + (f" x {scale:g}" if scale != 1.0 else ""))


def _resolve_run(model: str | None, run: Path, checkpoint: int | None, scale: float) -> TrainedWeights:
    if not run.is_dir():
        raise TrainedModelError(f"{run}: run folder not found")
    config = _read_run_config(run)
    model_section = config.get("model", {})
    base = model or model_section.get("source") or "shapes-sd"
    if model and model_section.get("source") and model != model_section["source"]:
        logger.warning("%s was trained on %s; loading its weights onto --model %s", run, model_section["source"], model)
    is_lora = bool(model_section.get("lora", True))
    common = dict(base=base, run=run, checkpoint=checkpoint, run_config=config, lora_scale=scale)
    if not is_lora and scale != 1.0:
        raise TrainedModelError(f"{run}: --lora-scale applies to LoRA runs; this run fine-tuned the whole denoiser")
    if checkpoint is not None:
        if checkpoint < 0:
            raise TrainedModelError(f"--checkpoint must be a non-negative epoch, got {checkpoint}")
        folder = _epoch_folder(run, checkpoint)
        if not (folder / "trainer_state.json").is_file():
            saved = _saved_epochs(run)
            raise TrainedModelError(f"{run}: no complete checkpoint for epoch {checkpoint}; saved epochs: "
                                    f"{', '.join(map(str, saved)) or 'none'}")
        weights = folder / CHECKPOINT_WEIGHTS
        if not weights.is_file():
            raise TrainedModelError(f"{folder}: missing {CHECKPOINT_WEIGHTS}")
        ema = folder / "ema.pt"
        return TrainedWeights(kind="lora_state" if is_lora else "denoiser_state", path=weights,
                              ema_file=ema if ema.is_file() else None, label=f"{run} epoch {checkpoint}", **common)
    final = run / "final"
    expected = LORA_FILE if is_lora else DENOISER_FILE
    extra = {p.stem: p for p in final.glob("*.safetensors") if p.name not in (LORA_FILE, DENOISER_FILE)}
    if not (final / LORA_FILE).is_file() and not (final / DENOISER_FILE).is_file() and extra:
        # the model stayed frozen; only other trainables were learned (FIND's noise law)
        return TrainedWeights(kind="base", path=final, extra_files=extra, label=f"{run} (final)", **common)
    if not (final / expected).is_file():
        saved = _saved_epochs(run)
        hint = f"; saved epochs: {', '.join(map(str, saved))} (use --checkpoint N)" if saved else ""
        raise TrainedModelError(f"{run}: missing final/{expected} (the run has not finished){hint}")
    if is_lora:
        weights = TrainedWeights(kind="lora", path=final, label=f"{run} (final)", **common)
        if extra:
            raise TrainedModelError(f"{final}: holds trainables that are not the denoiser ({', '.join(sorted(extra))}); "
                                    "this version cannot load them with a LoRA")
        return weights
    return TrainedWeights(kind="denoiser_state", path=final / DENOISER_FILE, extra_files=extra,
                          label=f"{run} (final)", **common)


def load_trained_model(
    model: str | None = None,
    *,
    lora: str | Path | None = None,
    lora_scale: float = 1.0,
    run: str | Path | None = None,
    checkpoint: int | None = None,
    noise_policy: str | Path | None = None,
    device: torch.device | str | None = None,
    torch_dtype: torch.dtype | None = None,
):
    """The adapter for ``model`` with the trained weights on it (``run``'s base model when ``model`` is None).

    Raises :class:`TrainedModelError` (one line) for missing files and weights that do not fit the model.
    """
    from diffalign.pipelines import load

    trained = resolve_trained(model, lora=lora, lora_scale=lora_scale, run=run, checkpoint=checkpoint,
                              noise_policy=noise_policy)
    if trained is None:
        if model is None:
            raise TrainedModelError("give --model (or --run RUN_DIR)")
        return load(model, device=device, torch_dtype=torch_dtype)
    adapter = load(trained.base, device=device, torch_dtype=torch_dtype)
    return trained.apply(adapter)


# ---------------------------------------------------------------------------------- command line
def add_trained_model_arguments(parser: argparse.ArgumentParser, *, default_model: str | None = None,
                                model_help: str | None = None) -> None:
    """``--model``, ``--lora DIR``, ``--lora-scale``, ``--run RUN_DIR``, ``--checkpoint N``."""
    parser.add_argument("--model", default=None, help=model_help or (
        "base model: hub id, local folder or shipped name" + (f" (default: the run's, else {default_model})" if default_model
                                                              else " (default: the run's model.source)")))
    parser.add_argument("--lora", default=None, metavar="DIR", help="a diffusers-format LoRA folder (or .safetensors file) to load onto --model")
    parser.add_argument("--lora-scale", type=float, default=1.0, help="LoRA strength (default 1.0; 0 is the base model)")
    parser.add_argument("--run", default=None, metavar="RUN_DIR", help="a `diffalign train` run folder: its final weights")
    parser.add_argument("--checkpoint", type=int, default=None, metavar="N", help="with --run: the weights saved at epoch N")
    parser.add_argument("--noise-policy", default=None, metavar="DIR",
                        help="a learned initial-noise law: a find run's final/ folder (noise.safetensors) or its run folder")
    parser.set_defaults(_default_model=default_model)


def _model_from_args(args: argparse.Namespace) -> str | None:
    if args.model is not None or args.run is not None:
        return args.model
    return getattr(args, "_default_model", None)


def resolve_from_args(args: argparse.Namespace) -> tuple[str, TrainedWeights | None]:
    """``(base model, trained weights or None)`` from the options of :func:`add_trained_model_arguments`."""
    trained = resolve_trained(_model_from_args(args), lora=args.lora, lora_scale=args.lora_scale, run=args.run,
                              checkpoint=args.checkpoint, noise_policy=getattr(args, "noise_policy", None))
    base = trained.base if trained is not None else _model_from_args(args)
    if base is None:
        raise TrainedModelError("give --model (or --run RUN_DIR)")
    return base, trained


def load_from_args(args: argparse.Namespace, *, torch_dtype: torch.dtype | None = None):
    """:func:`load_trained_model` with the options of :func:`add_trained_model_arguments` (and ``--device``)."""
    from diffalign.pipelines import load

    base, trained = resolve_from_args(args)
    adapter = load(base, device=getattr(args, "device", None), torch_dtype=torch_dtype)
    return trained.apply(adapter) if trained is not None else adapter


# ---------------------------------------------------------------------------------- model card
def _header_comment(path: Path) -> list[str]:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return lines


def _changed_values(recipe: Path, config_dict: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``section.key = value`` for each value of the run that differs from the recipe's."""
    import dataclasses

    from diffalign.config import ConfigError, load_config

    try:
        original = load_config(recipe)
    except Exception:  # the recipe changed or vanished since the run started: list nothing rather than fail the save
        return []
    changed = []
    for section, values in config_dict.items():
        try:  # a section the recipe leaves out holds its defaults
            before = dataclasses.asdict(original.section(section))
        except ConfigError:
            before = {}
        changed += [f"{section}.{key} = {json.dumps(value)}" for key, value in values.items()
                    if key not in before or before[key] != value]
    return changed


def _is_shipped(recipe: Path) -> bool:
    import importlib.resources

    folder = Path(str(importlib.resources.files("diffalign.training") / "recipes"))
    try:
        return recipe.resolve().parent == folder.resolve()
    except OSError:
        return False


def _heldout_rows(run_dir: Path | None, history: Sequence[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    rows: list[Mapping[str, Any]] = list(history or [])
    if not rows and run_dir is not None and (run_dir / "metrics.jsonl").is_file():
        for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return [r for r in rows if "eval/reward_mean" in r]


def write_model_card(
    final_dir: str | Path,
    config,
    *,
    run_dir: str | Path | None = None,
    recipe: str | Path | None = None,
    history: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """``final_dir/README.md``: base model, algorithm, recipe and provenance, held-out metrics (from
    ``history`` or the run's ``metrics.jsonl``) and the diffusers lines that load the weights."""
    final_dir = Path(final_dir)
    run_dir = Path(run_dir) if run_dir is not None else final_dir.parent
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    run, model = data.get("run", {}), data.get("model", {})
    base = model.get("source", "?")
    lora = bool(model.get("lora", True))
    algorithm = run.get("algorithm") or "?"
    reward = data.get("reward", {}).get("spec", "?")
    lines = ["---", "library_name: diffusers", "tags:", "- diffalign", f"- {algorithm}", "- lora" if lora else "- full-fine-tune", "---", "",
             f"# {run.get('name', run_dir.name)}: {algorithm} on {base}", "",
             f"- **Base model:** `{base}`",
             f"- **Algorithm:** {algorithm}, {run.get('epochs', '?')} epochs, reward `{reward}`, seed {run.get('seed', '?')}",
             "- **Weights:** " + (f"LoRA rank {model.get('lora_rank')}, alpha {model.get('lora_alpha') or model.get('lora_rank')}, "
                                  f"targets {', '.join(model.get('lora_targets') or []) or 'the adapter default (attention projections)'}"
                                  if lora else "the whole denoiser (full fine-tune)")]
    if recipe is not None:
        recipe = Path(recipe)
        kind = f"the shipped recipe `{recipe.stem}`" if _is_shipped(recipe) else f"`{recipe}`"
        lines.append(f"- **Recipe:** {kind}")
        comment = _header_comment(recipe) if recipe.is_file() else []
        if comment:
            lines += ["", *(f"> {c}" for c in comment)]
        changed = _changed_values(recipe, data) if recipe.is_file() else []
        if changed:
            lines += ["", "Changed from the recipe:", "", *(f"- `{c}`" for c in changed)]
    else:
        lines.append("- **Recipe:** none (the config was given in Python); the full config is the run's `config.toml`")
    held = _heldout_rows(run_dir, history)
    lines += ["", "## Held-out reward", ""]
    gold = data.get("eval", {}).get("gold") or ""
    if held and gold:  # the gold scorer beside the proxy (diffalign.training.gold)
        lines += [f"Gold scorer `{gold}` (never optimised) beside the reward.", "",
                  "| epoch | eval/reward_mean | eval/reward_std | eval/gold_mean | reward hacking |", "|---|---|---|---|---|"]
        lines += [f"| {r.get('epoch', '?')} | {r['eval/reward_mean']:.4f} | {r.get('eval/reward_std', float('nan')):.4f} | "
                  f"{r.get('eval/gold_mean', float('nan')):.4f} | {'yes' if r.get('eval/reward_hacking') else ''} |" for r in held]
    elif held:
        lines += ["| epoch | eval/reward_mean | eval/reward_std |", "|---|---|---|"]
        lines += [f"| {r.get('epoch', '?')} | {r['eval/reward_mean']:.4f} | {r.get('eval/reward_std', float('nan')):.4f} |" for r in held]
    else:
        lines.append("No held-out evaluation was logged.")
    from diffalign.pipelines import shipped_model_path

    # a bare name of a model in assets/models (shipped_model_path also accepts any absolute folder)
    shipped = "/" not in base and not Path(base).exists() and shipped_model_path(base) is not None
    source = f'shipped_model_path("{base}")' if shipped else json.dumps(base)
    denoiser = _denoiser_component(base)
    lines += ["", "## Load it with diffusers", "", "```python"]
    if shipped:
        lines.append("from diffalign.pipelines import shipped_model_path  # the base model ships with diffalign")
    lines.append("from diffusers import DiffusionPipeline")
    lines.append(f"pipe = DiffusionPipeline.from_pretrained({source})")
    if lora:
        lines.append(f'pipe.load_lora_weights("{final_dir.as_posix()}")')
    else:
        lines.append("from safetensors.torch import load_file")
        lines.append(f'pipe.{denoiser}.load_state_dict(load_file("{(final_dir / DENOISER_FILE).as_posix()}"), strict=False)')
    lines += ["```", "", f"Or with diffalign: `diffalign sample --run {run_dir.as_posix()}`, "
              f"`diffalign eval shapes --run {run_dir.as_posix()} --compare`.", ""]
    final_dir.mkdir(parents=True, exist_ok=True)
    path = final_dir / CARD_FILE
    path.write_text("\n".join(lines))
    return path


def _denoiser_component(base: str) -> str:
    """``unet`` or ``transformer``, from the base model's ``model_index.json`` when it is a folder."""
    index = Path(_shipped_or_path(base)) / "model_index.json"
    if index.is_file():
        names = read_json(index, "the base model's model index")
        return "unet" if "unet" in names else "transformer"
    return "unet"


def _load_noise_policy(adapter, tensors: dict[str, torch.Tensor]) -> None:
    from diffalign.training.algorithms.find import load_noise_policy

    load_noise_policy(adapter, tensors)


def _check_noise_policy(adapter, tensors: dict[str, torch.Tensor]) -> None:
    from diffalign.training.algorithms.find import check_noise_policy

    check_noise_policy(adapter, tensors)


_load_noise_policy.check = _check_noise_policy  # type: ignore[attr-defined]
NON_DENOISER_LOADERS.register("noise", _load_noise_policy)
