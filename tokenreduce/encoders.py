"""Turn sampled video frames into a grid of visual tokens for the demo and the pictures.

Two encoders:

- ``StandInEncoder`` (default, no weights, no network): every frame is cut into a ``rows x cols``
  grid of patches; a patch is described by its pixels (area-resized to ``pixels x pixels``, RGB
  in [0, 1], centred at 0.5) plus a constant bias entry, and that description is multiplied by a
  fixed Gaussian random matrix (seeded) to ``dim`` features. A random projection keeps cosine
  similarities approximately (Johnson-Lindenstrauss), so patches that look alike get similar
  features and a still background is near-identical from frame to frame, which is the property
  ST-SimDiff's graph relies on. The bias entry keeps every feature vector away from zero.
- ``VisionTowerEncoder``: a Hugging Face vision-language checkpoint's own image processor and
  vision tower (``get_image_features``); every sampled frame goes through it as one image, so
  there is one token row per frame. ``visualize --model`` loads the checkpoint through it and runs
  the whole model (``model_showcase.py``).

Signals the stand-in cannot give are replaced by documented proxies (``EncodedVideo.proxies``):
``importance`` is the *patch contrast* (standard deviation of the patch's grey levels), standing
in for the LLM's or the encoder's attention; ``keys`` are the features themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tokenreduce.adapters import hf
from tokenreduce.errors import MissingDependencyError, TokenReduceError

PROXY_IMPORTANCE = "patch contrast"
PROXY_KEYS = "features"


@dataclass(frozen=True)
class EncodedVideo:
    """Visual tokens of one video and the proxy signals that stand in for model internals.

    Attributes:
        features: float32 ``[1, T, H, W, D]``; token row ``t`` shows frame ``t`` of the clip.
        importance: float32 ``[1, T, H, W]``: the proxy importance (patch contrast).
        encoder: a one-line description of the encoder that made the features.
        proxies: signal name -> what stands in for it (``{"importance": "patch contrast", ...}``).
        num_layers: decoder layers of the LLM the tokens are meant for (cost budgets need it): the
            checkpoint's, or 28 (Qwen2-7B, the LLM of the paper's models) for the stand-in.
    """

    features: torch.Tensor
    importance: torch.Tensor
    encoder: str
    proxies: dict[str, str] = field(default_factory=dict)
    num_layers: int = 28

    @property
    def grid(self) -> tuple[int, int, int]:
        _, t, h, w, _ = self.features.shape
        return int(t), int(h), int(w)


def _frames_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float ``[T, 3, H, W]`` in [0, 1]."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError("frames must be a uint8 array [T, H, W, 3], got "
                         f"{getattr(frames, 'shape', type(frames).__name__)}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0


def grid_for(height: int, width: int, cols: int) -> tuple[int, int]:
    """``(rows, cols)`` of a patch grid ``cols`` wide that follows the frame's aspect ratio."""
    return max(1, round(cols * height / width)), cols


def patch_contrast(frames: np.ndarray, rows: int, cols: int) -> torch.Tensor:
    """``[T, rows, cols]``: the standard deviation of each patch's grey levels (the importance proxy)."""
    pixels = _frames_tensor(frames)
    grey = (0.299 * pixels[:, 0] + 0.587 * pixels[:, 1] + 0.114 * pixels[:, 2]).unsqueeze(1)
    grey = F.interpolate(grey, size=(rows * 8, cols * 8), mode="area").squeeze(1)
    patches = grey.unflatten(1, (rows, 8)).unflatten(3, (cols, 8))  # [T, rows, 8, cols, 8]
    return patches.std(dim=(2, 4), unbiased=False)


class StandInEncoder:
    """Weight-free patch features: a seeded random projection of each patch's centred pixels.

    Args:
        cols: patches per row; rows follow the frame's aspect ratio (16 -> 16x9 on 16:9 video).
        dim: feature size.
        pixels: each patch is area-resized to ``pixels x pixels`` before projecting.
        seed: seed of the projection matrix (same seed, same features).
    """

    def __init__(self, cols: int = 16, dim: int = 256, pixels: int = 8, seed: int = 0) -> None:
        for name, value in (("cols", cols), ("dim", dim), ("pixels", pixels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.cols, self.dim, self.pixels, self.seed = cols, dim, pixels, seed
        generator = torch.Generator().manual_seed(seed)
        describe = 3 * pixels * pixels + 1
        self.projection = torch.randn(describe, dim, generator=generator) / math.sqrt(dim)

    def encode(self, frames: np.ndarray) -> EncodedVideo:
        """Features ``[1, T, rows, cols, dim]`` and the contrast proxy of ``frames`` (uint8 ``[T,H,W,3]``)."""
        pixels = _frames_tensor(frames)
        t, _, height, width = pixels.shape
        rows, cols = grid_for(height, width, self.cols)
        p = self.pixels
        small = F.interpolate(pixels, size=(rows * p, cols * p), mode="area") - 0.5
        patches = small.unflatten(2, (rows, p)).unflatten(4, (cols, p))  # [T, 3, rows, p, cols, p]
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(t, rows, cols, 3 * p * p)
        bias = torch.full((t, rows, cols, 1), 0.25)
        features = torch.cat([patches, bias], dim=-1) @ self.projection
        return EncodedVideo(
            features=features.unsqueeze(0).contiguous(),
            importance=patch_contrast(frames, rows, cols).unsqueeze(0),
            encoder=f"stand-in (random projection of {p}x{p} patch pixels, {rows}x{cols} grid, d={self.dim})",
            proxies={"importance": PROXY_IMPORTANCE, "keys": PROXY_KEYS},
        )


class VisionTowerEncoder:
    """A checkpoint's own image processor and vision tower (``from_pretrained(path)``, local files only).

    Works with models that expose ``get_image_features`` (Qwen2-VL / Qwen2.5-VL return a token grid
    through ``image_grid_thw``; others must return a square grid per image).
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_dir():
            raise TokenReduceError(f"--model {str(path)!r} is not a directory holding a checkpoint")
        try:
            from transformers import AutoImageProcessor, AutoModelForImageTextToText
        except ImportError:
            raise MissingDependencyError("--model needs transformers: pip install 'tokenreduce[hf]'") from None
        try:
            self.processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise TokenReduceError(f"cannot load a vision-language checkpoint from {path}: {exc}") from None
        if not hasattr(self.model, "get_image_features"):
            raise TokenReduceError(f"{type(self.model).__name__} has no get_image_features; --model needs a "
                                   "vision-language model such as Qwen2-VL")
        self.name = path.name

    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> EncodedVideo:
        inputs = self.processor(images=list(frames), return_tensors="pt")
        grid_thw = inputs.get("image_grid_thw")
        kwargs = {"image_grid_thw": grid_thw} if grid_thw is not None else {}
        output = self.model.get_image_features(pixel_values=inputs["pixel_values"], **kwargs)
        per_frame = hf.encoded_features(output)
        per_frame = torch.stack([f.reshape(-1, f.shape[-1]) for f in per_frame]).float()
        t, n, dim = per_frame.shape
        if grid_thw is not None:
            merge = getattr(getattr(self.model.config, "vision_config", None), "spatial_merge_size", 1)
            rows, cols = int(grid_thw[0, 1]) // merge, int(grid_thw[0, 2]) // merge
        else:
            rows = cols = math.isqrt(n)
        if rows * cols != n:
            raise TokenReduceError(f"{self.name}: cannot lay {n} tokens per frame out as a grid")
        return EncodedVideo(
            features=per_frame.reshape(1, t, rows, cols, dim).contiguous(),
            importance=patch_contrast(frames, rows, cols).unsqueeze(0),
            encoder=f"{self.name} vision tower ({rows}x{cols} grid, d={dim})",
            proxies={"importance": PROXY_IMPORTANCE, "keys": PROXY_KEYS},
            num_layers=self._num_layers(),
        )

    def _num_layers(self) -> int:
        config = self.model.config
        text = getattr(config, "text_config", config)
        return int(getattr(text, "num_hidden_layers", 28))


def make_encoder(model: str | Path | None = None, cols: int = 16) -> StandInEncoder | VisionTowerEncoder:
    """The stand-in encoder, or a checkpoint's vision tower when ``model`` names one."""
    return StandInEncoder(cols=cols) if model is None else VisionTowerEncoder(model)
