"""The open_clip zero-shot predictor: log p_zs(c | x) for rows of a dataset split.

p_zs(c | x) = softmax_c(s · cos(f(x), t_c)), with f the image encoder, s = exp(logit_scale)
and t_c the class embedding: the mean over templates of the L2-normalised prompt embeddings,
renormalised (CLIP's prompt ensemble, via ``open_clip.build_zero_shot_classifier``).

In-memory uint8 images are preprocessed on the device with tensor ops equivalent to the
model's own eval transform (bicubic resize of the shorter side, centre crop, RGB, normalise);
file-backed images are decoded with PIL in a thread pool and go through that transform itself.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image

from bdsel.predictors.registry import register_predictor

if TYPE_CHECKING:
    from bdsel.config import Config
    from bdsel.data import Dataset, ImageSet, RunData

# open_clip (and the prompts module, which reads its templates) load only when a CLIP model is
# built: registering the predictor must not cost a training run the open_clip import.

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in chunks (checkpoints can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def _resolve_pretrained(model: str, pretrained: str) -> tuple[str | None, str | None]:
    """(what to pass to open_clip, sha256 of the weights file or None) for a tag or a path."""
    import open_clip

    if not pretrained:
        return None, None  # random init: benchmarks and tests
    if os.path.isfile(pretrained):
        return pretrained, file_sha256(pretrained)
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained in tags:
        return pretrained, _fetch_pretrained(model, pretrained)
    if os.sep in pretrained or "/" in pretrained or pretrained.endswith(_CHECKPOINT_SUFFIXES):
        raise FileNotFoundError(f"CLIP checkpoint file {pretrained} does not exist")
    raise ValueError(
        f"pretrained={pretrained!r} is neither a checkpoint file nor a known tag of {model!r} "
        f"(known tags: {', '.join(tags) or 'none'})"
    )


def _fetch_pretrained(model: str, tag: str) -> str | None:
    """Download the weights of a pretrained tag (or find them in the local cache) before the
    model is built, so that an offline machine fails at once and clearly; their sha256.

    Offline, huggingface_hub and urllib retry for about a minute before they give up: a
    two-second connection to the weights' host decides first."""
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    cfg = get_pretrained_cfg(model, tag)
    host = None if _cached_weights(cfg) else _weights_host(cfg)
    reason = None
    if host is not None and not _reachable(host):
        reason = f"{host} cannot be reached from this machine"
    else:
        try:
            path = download_pretrained(cfg)
        except Exception as exc:  # requests, huggingface_hub and urllib each raise their own
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if reason is not None:
        raise ValueError(
            f"zeroshot.pretrained={tag!r}: the {model} weights are not available offline: "
            f"they are not in the local cache and cannot be downloaded ({reason}); download "
            "them where there is internet and point zeroshot.pretrained at the file: "
            f"--set zeroshot.pretrained=/path/to/{model}-{tag}.pt"
        ) from None
    return file_sha256(path) if path else None


def _cached_weights(cfg: dict[str, Any]) -> str | None:
    """The local copy of a pretrained config's weights, if a download left one."""
    if cfg.get("hf_hub"):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        model_id, filename = os.path.split(cfg["hf_hub"])
        found = try_to_load_from_cache(model_id, filename or "open_clip_pytorch_model.bin")
        return found if isinstance(found, str) else None
    if cfg.get("url"):
        local = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])
        return str(local) if local.is_file() else None
    return None


def _weights_host(cfg: dict[str, Any]) -> str | None:
    """The host a pretrained config downloads from (the HF hub's when it names one, as
    open_clip prefers it), or None when it names no download."""
    from urllib.parse import urlparse

    if cfg.get("hf_hub"):
        try:
            from huggingface_hub import constants
        except ImportError:
            pass
        else:
            return urlparse(constants.ENDPOINT).hostname
    return urlparse(cfg["url"]).hostname if cfg.get("url") else None


def _reachable(host: str, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to ``host``:443 opens within ``timeout`` seconds."""
    import socket

    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


class ClipPredictor:
    """Zero-shot CLIP classifier over fixed class prompts.

    Args:
        model: open_clip architecture name (built-in, or registered with add_model_config).
        pretrained: a pretrained tag (downloaded when online), a local checkpoint file, or
            "" for random init (benchmarks only).
        class_names, templates: prompt ingredients (see ``prompts.prompts_for``).
        precision: "fp32", or "bf16"/"fp16" for autocast (weights stay fp32; the cosine,
            logit scale and log-softmax are always computed in fp32).
        device: where the model runs; results come back on the CPU.
        batch_size: images per forward pass.
        num_workers: decoding threads for file-backed images (default: min(8, CPUs)).
    """

    def __init__(
        self,
        model: str,
        pretrained: str,
        class_names: Sequence[str],
        templates: Sequence[str],
        *,
        precision: str = "fp32",
        device: str | torch.device = "cpu",
        batch_size: int = 256,
        num_workers: int | None = None,
    ) -> None:
        import open_clip

        from bdsel.predictors.prompts import validate_templates

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not class_names:
            raise ValueError("class_names is empty")
        validate_templates(list(templates), "ClipPredictor")
        self.model_name, self.pretrained, self.precision = model, pretrained or "", precision
        self.class_names, self.templates = list(class_names), list(templates)
        self.device, self.batch_size = torch.device(device), batch_size
        self.num_workers = num_workers or min(8, os.cpu_count() or 1)
        source, self.checkpoint_sha256 = _resolve_pretrained(model, self.pretrained)

        # Weights stay fp32 whatever the precision: autocast then picks per-op dtypes (LayerNorm
        # and softmax in fp32), which works for every tower type, unlike open_clip's weight cast.
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            model, pretrained=source, precision="fp32", device=self.device
        )
        self.model.eval()
        cfg = self.model.visual.preprocess_cfg
        size = cfg["size"]
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        self.interpolation, self.resize_mode = cfg["interpolation"], cfg["resize_mode"]
        self._mean = torch.tensor(cfg["mean"], device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(cfg["std"], device=self.device).view(1, 3, 1, 1)
        self._pool: ThreadPoolExecutor | None = None

        tokenizer = open_clip.get_tokenizer(model)
        with torch.no_grad(), self._autocast():
            weights = open_clip.build_zero_shot_classifier(
                self.model, tokenizer, self.class_names, self.templates, device=self.device
            )
        # [C, D] unit rows; renormalised in fp32 because the mean may have been taken in bf16.
        self.classifier = F.normalize(weights.float().T, dim=-1)
        self.logit_scale = self.model.logit_scale.detach().float().exp().reshape(())

    def _autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def spec(self) -> dict[str, Any]:
        """What identifies this predictor's outputs; stored in, and checked against, the cache."""
        return {
            "kind": "clip",
            "model": self.model_name,
            "pretrained": self.pretrained,
            "checkpoint_sha256": self.checkpoint_sha256,
            "templates": list(self.templates),
            "class_names": list(self.class_names),
            "precision": self.precision,
        }

    # ------------------------------------------------------------------ preprocessing

    def preprocess_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C, H, W] (C = 1 or 3) -> normalised float32 [B, 3, S, S] on the device.

        Matches the PIL eval transform to within one grey level: antialiased bicubic resize
        (torch's antialiased kernels use PIL's a = -0.5), centre crop, grey -> RGB, normalise.
        """
        x = images.to(self.device, non_blocking=True)
        if self.resize_mode not in ("shortest", "squash") or (
            self.resize_mode == "shortest" and self.image_size[0] != self.image_size[1]
        ):
            return self._preprocess_with_pil(x)  # rare layouts: defer to open_clip's transform
        th, tw = self.image_size
        h, w = x.shape[-2:]
        if self.resize_mode == "squash":
            new_hw = (th, tw)
        elif h <= w:  # torchvision Resize(int): shorter side -> size, longer side truncated
            new_hw = (th, int(th * w / h))
        else:
            new_hw = (int(th * h / w), th)
        x = x.float()
        # PIL resamples width then height, rounding to uint8 after each pass; doing the same
        # brings us within one grey level of it (a single 2-D pass differs by up to ~15 levels
        # on high-frequency content, where PIL's intermediate clipping matters).
        mode = "bilinear" if self.interpolation == "bilinear" else "bicubic"
        for size in ((h, new_hw[1]), new_hw):
            if size != tuple(x.shape[-2:]):
                x = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
                x = x.clamp_(0, 255).round_()
        top, left = round((new_hw[0] - th) / 2), round((new_hw[1] - tw) / 2)
        x = x[..., top : top + th, left : left + tw]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x / 255.0 - self._mean) / self._std

    def _preprocess_with_pil(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.functional import to_pil_image

        out = [self.preprocess(to_pil_image(img.cpu())) for img in x]
        return torch.stack(out).to(self.device)

    def _decode(self, path: str) -> torch.Tensor:
        with Image.open(path) as im:
            return self.preprocess(im)

    def _decode_files(self, paths: list[str]) -> torch.Tensor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="bdsel-decode")
        x = torch.stack(list(self._pool.map(self._decode, paths)))
        if self.device.type == "cuda":
            x = x.pin_memory()
        return x.to(self.device, non_blocking=True)

    def _pixels(self, images: ImageSet, rows: torch.Tensor) -> torch.Tensor:
        if images.images is not None:
            data = images.images
            return self.preprocess_tensor(data[rows.to(data.device)])
        if images.files is not None:
            return self._decode_files([images.files[i] for i in rows.tolist()])
        raise ValueError("ImageSet has neither images nor files")

    # ------------------------------------------------------------------ inference

    def encode_images_raw(self, pixels: torch.Tensor) -> torch.Tensor:
        """The bare ``model.encode_image`` on preprocessed pixels [B, 3, S, S] (benchmarks)."""
        with torch.no_grad(), self._autocast():
            return self.model.encode_image(pixels)

    def logprobs_from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels [B, 3, S, S] -> log p_zs [B, C] float32 on the device."""
        with torch.no_grad():
            with self._autocast():
                features = self.model.encode_image(pixels)
            features = F.normalize(features.float(), dim=-1)
            # SigLIP's logit_bias is a constant shift per row, so softmax ignores it.
            logits = self.logit_scale * (features @ self.classifier.T)
            return torch.log_softmax(logits, dim=-1)

    def __call__(self, images: torch.Tensor | Sequence[Image.Image]) -> torch.Tensor:
        """A batch of images -> log p_zs [B, C] float32 on the CPU: uint8 [B, C, H, W]
        tensors, or PIL images (open_clip's own eval transform), as a user's dataset yields
        them (:func:`bdsel.write_zeroshot_cache`)."""
        if isinstance(images, torch.Tensor):
            if images.dtype != torch.uint8 or images.ndim != 4:
                raise ValueError(
                    f"images: expected uint8 [B, C, H, W] or PIL images, got {images.dtype} "
                    f"{tuple(images.shape)}"
                )
            pixels = self.preprocess_tensor(images)
        else:
            pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in images])
        return self.logprobs_from_pixels(pixels.to(self.device)).cpu()

    def image_logprobs(self, images: ImageSet, rows: torch.Tensor) -> torch.Tensor:
        """log p_zs(c | x_i) for i in ``rows`` (int64 [n]) of ``images`` -> float32 [n, C], CPU."""
        rows = torch.as_tensor(rows, dtype=torch.long).cpu()
        out = [
            self.logprobs_from_pixels(self._pixels(images, chunk)).cpu()
            for chunk in rows.split(self.batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, self.n_classes)

    def close(self) -> None:
        """Stop the decoding threads (they are also daemon-like and end with the process)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


def clip_model_name(model: str) -> str:
    """A built-in open_clip name, or a JSON architecture file registered under its stem."""
    if not model.endswith(".json"):
        return model
    import open_clip

    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"zeroshot.model: architecture file {path} does not exist")
    open_clip.add_model_config(path)
    return path.stem


def clip_weights_spec(model: str, pretrained: str) -> dict[str, str]:
    """How a spec names CLIP weights, as ``ClipPredictor.spec`` stores them: the architecture
    (a JSON file's stem) and the pretrained tag or checkpoint as given."""
    return {"model": Path(model).stem if model.endswith(".json") else model,
            "pretrained": pretrained}  # fmt: skip


@dataclass
class ClipSettings:
    """The ``clip`` predictor: open_clip's zero-shot classifier, one inference pass."""

    model: str = "RN50"  # an open_clip architecture name, or a JSON architecture file
    pretrained: str = "openai"  # a pretrained tag (needs internet) or a local checkpoint
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # inference precision
    prompts: str | None = None  # YAML/JSON file with class_names and templates


def cache_stem(config: Config) -> str:
    """The dataset, the architecture and the weights the cache depends on."""
    z = config.zeroshot.settings
    return f"{config.data.name}-clip-{Path(z.model).stem}-{Path(z.pretrained).stem or 'random'}"


@register_predictor("clip", cache_stem=cache_stem)
class ClipZeroShot:
    """The ``clip`` predictor: a :class:`ClipPredictor` over one dataset's splits, built from
    ``zeroshot.model``, ``pretrained``, ``precision`` and ``prompts``, in batches of
    ``eval.batch_size``."""

    Settings = ClipSettings  # zeroshot.* when zeroshot.predictor=clip

    def __init__(self, clip: ClipPredictor, dataset: Dataset, data: RunData | None = None) -> None:
        self.clip, self.dataset, self.data = clip, dataset, data

    @staticmethod
    def settings(config: Config) -> dict[str, Any]:
        """The settings that shape its outputs, as its spec names them."""
        z = config.zeroshot.settings
        return {
            "kind": "clip",
            **clip_weights_spec(z.model, z.pretrained),
            "precision": z.precision,
        }

    @staticmethod
    def expected_spec(config: Config, data: RunData) -> dict[str, Any]:
        """The prompts its spec stores for ``data``'s dataset."""
        from bdsel.predictors.prompts import prompts_for

        ds = data.dataset
        class_names, templates = prompts_for(
            ds.name, ds.class_names, config.zeroshot.settings.prompts
        )
        return {"templates": list(templates), "class_names": list(class_names)}

    @classmethod
    def from_config(cls, config: Config, data: RunData, device: torch.device) -> ClipZeroShot:
        from bdsel.predictors.prompts import prompts_for

        z = config.zeroshot.settings
        class_names, templates = prompts_for(data.dataset.name, data.dataset.class_names, z.prompts)
        clip = ClipPredictor(
            clip_model_name(z.model),
            z.pretrained,
            class_names,
            templates,
            precision=z.precision,
            device=device,
            batch_size=config.eval.batch_size,
        )
        return cls(clip, data.dataset, data)

    calibration_labels = "observed"  # noise included: the temperature is fitted with it

    def calibration(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Rows and labels for the temperature. The paper has no clean labels: the training
        subset's observed (possibly noisy) labels, so that p_zs becomes a calibrated
        probability that the observed label is right. CLIP never trained on them."""
        if self.data is None:
            return None
        return self.data.train_idx, self.data.observed[self.data.train_idx]

    def logprobs(self, split: str, rows: torch.Tensor) -> torch.Tensor:
        """log p_zs(c | x) for ``rows`` of ``split`` ("train" / "test") -> float32 [n, C], CPU."""
        return self.clip.image_logprobs(getattr(self.dataset, split), rows)

    def spec(self) -> dict[str, Any]:
        return self.clip.spec()

    def close(self) -> None:
        self.clip.close()
