"""The seam between the daemon and whatever transforms frames.

``FramePipeline`` is all the daemon needs: ``process`` a F×3×H×W [0, 1] tensor into one of
the same shape, ``update`` live parameters (raising ``RebuildRequired`` when it cannot), and a
few read-only facts for telemetry. ``IdentityPipeline`` (no model: ``bench daemon`` and tests)
and ``StreamBatchPipeline`` (the real StreamDiffusion pipeline) implement it.
``build_pipeline(preset, params)`` is the default factory the daemon calls on its builder
thread; the model is loaded there, never on the inference thread.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol

import torch

from bridge.config import ModelConfig, Preset
from bridge.errors import RuntimeMissingError


class FramePipeline(Protocol):
    frame_buffer_size: int
    device: torch.device
    description: dict[str, Any]  # shown in stats: model, acceleration actually used, ...

    def process(self, images: torch.Tensor | None) -> torch.Tensor:
        """F×3×H×W in [0, 1] -> F×3×H×W in [0, 1]; ``None`` in txt2img mode."""

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply live parameters; raises RebuildRequired for ones it cannot change live."""

    @property
    def ready(self) -> bool:
        """False while warming up (outputs would come from an empty latent buffer)."""

    @property
    def skipped_frames(self) -> int:
        """Similarity-filter skips since construction."""

    def close(self) -> None: ...


PipelineFactory = Callable[[Preset, Mapping[str, Any]], FramePipeline]


class IdentityPipeline:
    """Returns its input: measures the daemon itself (threads, slots, stages, transports)."""

    def __init__(self, frame_buffer_size: int = 1, device: str = "cpu") -> None:
        self.frame_buffer_size = frame_buffer_size
        self.device = torch.device(device)
        self.description: dict[str, Any] = {"pipeline": "identity"}
        self.params: dict[str, Any] = {}

    def process(self, images: torch.Tensor | None) -> torch.Tensor:
        if images is None:
            raise RuntimeMissingError("the identity pipeline needs input frames (txt2img has none)",
                                      fix="use mode img2img with the identity pipeline")
        return images

    def update(self, changes: Mapping[str, Any]) -> None:
        self.params.update(changes)

    @property
    def ready(self) -> bool:
        return True

    @property
    def skipped_frames(self) -> int:
        return 0

    def close(self) -> None:
        """Nothing to release."""


def identity_factory(preset: Preset, params: Mapping[str, Any]) -> FramePipeline:
    return IdentityPipeline(int(params["frame_buffer_size"]))


def resolve_model_spec(model: ModelConfig) -> Any:
    """The preset's model section as the loader's ModelSpec, with ``auto`` device/dtype chosen."""
    from bridge.pipeline.models import ModelSpec

    device = model.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = model.dtype
    if dtype == "auto":
        dtype = "float16" if device == "cuda" else "float32"
    return ModelSpec(id_or_path=model.id, lcm_lora=model.lcm_lora,
                     lcm_lora_scale=model.lcm_lora_scale, tiny_vae=model.tiny_vae, dtype=dtype,
                     device=device, step_kind=model.step_kind, family=model.family)


class StreamBatchPipeline:
    """``bridge.pipeline.stream_batch.StreamBatch`` behind the FramePipeline seam."""

    def __init__(self, stream: Any, components: Any, params: Mapping[str, Any],
                 description: dict[str, Any]) -> None:
        self._stream = stream
        self._txt2img = params["mode"] == "txt2img"
        self.frame_buffer_size = int(params["frame_buffer_size"])
        self.device = components.device
        self.description = description

    def process(self, images: torch.Tensor | None) -> torch.Tensor:
        if self._txt2img:
            return self._stream.process(None)
        return self._stream.process(images)

    def update(self, changes: Mapping[str, Any]) -> None:
        self._stream.update(dict(changes))

    @property
    def ready(self) -> bool:
        return bool(self._stream.ready)

    @property
    def skipped_frames(self) -> int:
        return int(self._stream.frames_skipped)

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


def stream_batch_factory(preset: Preset, params: Mapping[str, Any], *,
                         progress: bool = True) -> FramePipeline:
    """Load the model, create the backend (explicit fallback only), build the StreamBatch."""
    from bridge.pipeline.backends import create_backend
    from bridge.pipeline.models import load_components
    from bridge.pipeline.stream_batch import StreamBatch

    if preset.model.threads:
        torch.set_num_threads(preset.model.threads)
    if not progress:
        _quiet_library_progress_bars()
    spec = resolve_model_spec(preset.model)
    components = load_components(spec, progress=progress)
    # A missing runtime raises, unless the preset names a fallback (then a loud warning).
    backend = create_backend(components, preset.model.acceleration, params=dict(params),
                             fallback=preset.model.fallback, progress=progress)
    stream = StreamBatch(components, dict(params), backend=backend)
    description = {"pipeline": "stream_batch", "model": spec.id_or_path, "device": spec.device,
                   "dtype": spec.dtype, "backend": backend.name,
                   "acceleration_requested": preset.model.acceleration}
    return StreamBatchPipeline(stream, components, params, description)



def _quiet_library_progress_bars() -> None:
    """transformers/diffusers draw their own weight-loading bars; JSON logs must stay clean."""
    import diffusers.utils.logging
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
