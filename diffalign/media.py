"""The one place where media tensors meet PIL images, numpy arrays and files.

Convention everywhere in diffalign: images are ``B×C×H×W`` and videos ``B×T×C×H×W`` float tensors
in [0, 1], RGB. Scorers, benchmarks and trainers take and return only these.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from diffalign.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".webm", ".avi", ".mov", ".mkv", ".gif"}


class MediaError(UserError):
    """A media file or tensor that cannot be used; the message names the file or the problem."""


def check_media(media: torch.Tensor, modality: str | None = None) -> str:
    """Validate a media tensor and return its modality (``"image"`` or ``"video"``)."""
    if not isinstance(media, torch.Tensor):
        raise MediaError(f"media must be a torch.Tensor, got {type(media).__name__}")
    if media.ndim == 4:
        found = "image"
    elif media.ndim == 5:
        found = "video"
    else:
        raise MediaError(
            f"media must be B×C×H×W (images) or B×T×C×H×W (videos), got shape {tuple(media.shape)}"
        )
    if media.shape[-3] != 3:
        raise MediaError(f"media must have 3 RGB channels in dim -3, got shape {tuple(media.shape)}")
    if modality is not None and modality != found:
        raise MediaError(f"expected {modality} media, got {found} media of shape {tuple(media.shape)}")
    return found


def pil_to_tensor(images: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
    """PIL image(s) -> ``B×3×H×W`` float in [0, 1]. All images must share one size."""
    if isinstance(images, Image.Image):
        images = [images]
    arrays = [np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise MediaError(f"images have different sizes {sorted(sizes)}; resize them first")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def to_uint8(media: torch.Tensor) -> torch.Tensor:
    """[0, 1] float media -> uint8 with the same layout (rounded, clamped)."""
    return (media.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """``B×3×H×W`` (or a single ``3×H×W``) in [0, 1] -> list of PIL images."""
    if images.ndim == 3:
        images = images[None]
    check_media(images, "image")
    array = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]


def load_image(path: str | Path) -> torch.Tensor:
    """Read one image file -> ``3×H×W`` in [0, 1]; raises MediaError naming the file if unreadable."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return pil_to_tensor(im)[0]
    except FileNotFoundError as err:
        raise MediaError(f"{path}: no such file") from err
    except Exception as err:  # PIL raises many types for corrupt data
        raise MediaError(f"{path}: cannot read image ({type(err).__name__}: {err})") from err


def decode_image(data: bytes, name: str = "image") -> torch.Tensor:
    """Image file bytes (PNG, JPEG, ...) -> ``3×H×W`` in [0, 1]; raises MediaError naming ``name`` if corrupt."""
    import io

    if not isinstance(data, (bytes, bytearray, memoryview)) or not len(data):
        raise MediaError(f"{name}: no image bytes")
    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            im.load()
            return pil_to_tensor(im)[0]
    except Exception as err:  # PIL raises many types for corrupt data
        raise MediaError(f"{name}: cannot decode image ({type(err).__name__}: {err})") from err


def load_video(path: str | Path, max_frames: int | None = None, every: int = 1) -> torch.Tensor:
    """Read a video file -> ``T×3×H×W`` in [0, 1] (imageio; ffmpeg for mp4/webm)."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: no such file")
    try:
        frames = []
        for i, frame in enumerate(iio.imiter(path)):
            if i % every:
                continue
            frames.append(np.asarray(frame)[..., :3])
            if max_frames is not None and len(frames) >= max_frames:
                break
    except Exception as err:
        raise MediaError(f"{path}: cannot read video ({type(err).__name__}: {err})") from err
    if not frames:
        raise MediaError(f"{path}: video has no frames")
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0


def video_fps(path: str | Path) -> float | None:
    """Frames per second recorded in a video file's metadata (None when the container has none)."""
    import imageio.v3 as iio

    try:
        fps = iio.immeta(Path(path)).get("fps")
    except Exception as err:
        raise MediaError(f"{path}: cannot read video metadata ({type(err).__name__}: {err})") from err
    return float(fps) if fps else None


def even_frames(video: torch.Tensor, count: int | None) -> torch.Tensor:
    """At most ``count`` evenly spaced frames of a ``T×3×H×W`` video (first and last kept)."""
    frames = video.shape[0]
    if not count or frames <= count:
        return video
    return video[torch.linspace(0, frames - 1, count).round().long()]


def save_image(image: torch.Tensor, path: str | Path) -> Path:
    """Write one ``3×H×W`` image to ``path`` (format from the suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor_to_pil(image)[0].save(path)
    return path


def save_video(video: torch.Tensor, path: str | Path, fps: int = 8, nrow: int | None = None, scale: int = 1,
               pixel_format: str = "yuv444p", quality: int = 8) -> Path:
    """Write one ``T×3×H×W`` video, or a grid of ``B×T×3×H×W`` videos (``nrow`` per row, tiled frame by
    frame with :func:`make_grid`), as mp4 (H.264) or gif, both through ffmpeg; ``scale`` upsamples (nearest).

    MP4s keep full-resolution colour (``yuv444p``) by default: 4:2:0 chroma halves the colour
    resolution, which smears the colours of small objects (a 32 px clip's shapes change colour
    frame to frame), and ``quality`` 8 of 10 (H.264 CRF 10) keeps their edges; pass
    ``pixel_format="yuv420p"`` for players that need it. GIFs get a palette
    made from the whole clip and keep every frame (PIL's writer merges identical frames).
    """
    import imageio_ffmpeg

    if not isinstance(video, torch.Tensor) or video.ndim not in (4, 5):
        raise MediaError(f"save_video takes a T×3×H×W video or B×T×3×H×W videos, got {getattr(video, 'shape', type(video).__name__)}")
    if video.ndim == 5:
        check_media(video, "video")
        video = torch.stack([make_grid(video[:, t].float(), nrow=nrow) for t in range(video.shape[1])])
    if scale > 1:
        video = torch.nn.functional.interpolate(video.float(), scale_factor=scale, mode="nearest")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = to_uint8(video).permute(0, 2, 3, 1).cpu().numpy()
    if path.suffix.lower() == ".gif":
        options = dict(codec="gif", pix_fmt_out="pal8", output_params=[
            "-vf", "split[a][b];[a]palettegen=stats_mode=full[p];[b][p]paletteuse=dither=none", "-loop", "0", "-f", "gif"])
    else:
        if frames.shape[1] % 2 or frames.shape[2] % 2:  # H.264 needs even sides
            frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)), mode="edge")
        options = dict(codec="libx264", pix_fmt_out=pixel_format, quality=quality, output_params=["-f", "mp4"])
    height, width = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, macro_block_size=1, **options)
    writer.send(None)
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()
    return path


def make_frame_strip(videos: torch.Tensor, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """``B×T×3×H×W`` videos -> one ``3×H'×W'`` image: each video's frames in a row, one row per video."""
    if isinstance(videos, torch.Tensor) and videos.ndim == 4:
        videos = videos[None]
    check_media(videos, "video")
    batch, frames = videos.shape[:2]
    return make_grid(videos.reshape(batch * frames, *videos.shape[2:]).float(), nrow=frames, padding=padding, pad_value=pad_value)


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Tile ``B×3×H×W`` images into one ``3×H'×W'`` image, ``nrow`` images per row."""
    check_media(images, "image")
    count, channels, height, width = images.shape
    nrow = nrow or math.ceil(math.sqrt(count))
    rows = math.ceil(count / nrow)
    grid = torch.full(
        (channels, rows * (height + padding) + padding, nrow * (width + padding) + padding),
        pad_value,
        dtype=images.dtype,
    )
    for index, image in enumerate(images.detach().cpu()):
        r, c = divmod(index, nrow)
        top, left = padding + r * (height + padding), padding + c * (width + padding)
        grid[:, top : top + height, left : left + width] = image
    return grid


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """Save a grid PNG of images (videos: first frame of each), optionally upscaled for viewing."""
    if images.ndim == 5:
        images = images[:, 0]
    grid = make_grid(images.float(), nrow=nrow)
    if scale > 1:
        grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    return save_image(grid, path)


def save_frame_strip(videos: torch.Tensor, path: str | Path, max_frames: int | None = None, scale: int = 1) -> Path:
    """A PNG of video frames for quick viewing: one row per video (``B×T×3×H×W``, or one ``T×3×H×W``), its
    frames left to right (``max_frames`` evenly spaced ones when given)."""
    if videos.ndim == 4:
        videos = videos[None]
    check_media(videos, "video")
    videos = torch.stack([even_frames(v, max_frames) for v in videos.detach().float().cpu()])
    return save_grid(videos.flatten(0, 1), path, nrow=videos.shape[1], scale=scale)


def save_video_grid(videos: torch.Tensor, path: str | Path, nrow: int | None = None, fps: int = 8, scale: int = 1) -> Path:
    """One MP4 (or GIF) whose every frame is the grid of the ``B×T×3×H×W`` videos' frames at that time."""
    check_media(videos, "video")
    frames = []
    for t in range(videos.shape[1]):
        grid = make_grid(videos[:, t].detach().float().cpu(), nrow=nrow)
        if scale > 1:
            grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
        frames.append(grid)
    return save_video(torch.stack(frames), path, fps=fps)


def expand_paths(inputs: Iterable[str | Path], suffixes: set[str] | None = None) -> list[Path]:
    """Files, folders (recursive) and glob patterns -> a sorted, de-duplicated list of files."""
    import glob

    found: dict[Path, None] = {}
    for item in inputs:
        item = str(item)
        matches = [Path(p) for p in sorted(glob.glob(item, recursive=True))] if any(ch in item for ch in "*?[") else [Path(item)]
        if not matches:
            raise MediaError(f"{item}: no file matches")
        for match in matches:
            if match.is_dir():
                for file in sorted(p for p in match.rglob("*") if p.is_file()):
                    if suffixes is None or file.suffix.lower() in suffixes:
                        found[file] = None
            elif match.exists():
                found[match] = None
            else:
                raise MediaError(f"{match}: no such file or folder")
    return list(found)
