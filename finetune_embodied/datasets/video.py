"""MP4 encode/decode with PyAV: frames at exact 1/fps timestamps, so concatenated episodes are
addressed by time (LeRobot v3 stores each episode's ``from_timestamp``/``to_timestamp``)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from .validation import DatasetError

__all__ = ["VideoWriter", "decode_frames", "decode_parquet_images", "frame_to_rgb", "check_video_settings", "DEFAULT_CODEC", "DEFAULT_CRF", "DEFAULT_PIX_FMT", "PIX_FMTS"]

DEFAULT_CODEC = "libx264"  # h264: decodable by torchcodec, PyAV and browsers; LeRobot defaults to AV1
DEFAULT_PIX_FMT = "yuv420p"  # what LeRobot writes; chroma at half resolution in both directions
DEFAULT_CRF = 20
PIX_FMTS = ("yuv420p", "yuv444p")  # yuv444p keeps full-resolution colour (thin, coloured objects)


def check_video_settings(pix_fmt: str, crf: int) -> None:
    """ValueError naming the bad value unless ``pix_fmt`` is one we write and ``crf`` is in 0..51."""
    if pix_fmt not in PIX_FMTS:
        raise ValueError(f"pix_fmt must be one of {PIX_FMTS}, got {pix_fmt!r}")
    if not 0 <= int(crf) <= 51:
        raise ValueError(f"crf must be in 0..51 (0: lossless in YUV), got {crf}")


class VideoWriter:
    """Appends RGB frames to one mp4 whose frame k has pts k/fps (no B-frames, so pts == dts order)."""

    def __init__(self, path: str | Path, fps: int, width: int, height: int, codec: str = DEFAULT_CODEC,
                 crf: int = DEFAULT_CRF, pix_fmt: str = DEFAULT_PIX_FMT):
        import av

        check_video_settings(pix_fmt, crf)
        if width % 2 or height % 2:
            raise ValueError(f"video size must be even for {pix_fmt}, got {width}x{height}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.width, self.height, self.fps = width, height, fps
        self._container = av.open(str(self.path), mode="w")
        self._stream = self._container.add_stream(codec, rate=fps)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = pix_fmt
        self._stream.codec_context.time_base = Fraction(1, fps)
        # g=2: short GOPs make random access cheap (what LeRobot uses); bf=0: pts stay monotonic.
        opts = {"g": "2", "bf": "0", "crf": str(crf)}
        if codec == "libx264":
            opts["preset"] = "veryfast"
        self._stream.options = opts
        self.num_frames = 0
        self.codec = codec
        self.pix_fmt = pix_fmt

    def write(self, frames: np.ndarray) -> None:
        import av

        if frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3) or frames.dtype != np.uint8:
            raise ValueError(
                f"{self.path}: frames must be (T, {self.height}, {self.width}, 3) uint8, got {frames.shape} {frames.dtype}"
            )
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = self.num_frames
            frame.time_base = Fraction(1, self.fps)
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.num_frames += 1

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()


# BT.601 limited-range YUV -> RGB: what swscale assumes for untagged h264 (and what it used to
# write our videos). Converting in numpy/OpenCV is about 10x faster than PyAV's per-frame
# ``to_ndarray(format="rgb24")`` on small frames (docs/datasets.md) and matches it within 1 level.
_BT601_COLORSPACES = (2, 5, 6)  # unspecified, BT470BG, SMPTE170M
_LIMITED_RANGES = (0, 1)  # unspecified, MPEG (limited)


def frame_to_rgb(frame) -> np.ndarray:
    """A decoded ``av.VideoFrame`` -> (H, W, 3) uint8 RGB."""
    fmt = frame.format.name
    if int(frame.colorspace) in _BT601_COLORSPACES and int(frame.color_range) in _LIMITED_RANGES:
        if fmt == "yuv444p":
            planes = frame.to_ndarray().astype(np.float32)  # (3, H, W): Y, U, V
            y, u, v = planes[0] - 16.0, planes[1] - 128.0, planes[2] - 128.0
            rgb = np.stack([1.164 * y + 1.596 * v, 1.164 * y - 0.392 * u - 0.813 * v, 1.164 * y + 2.017 * u], axis=-1)
            return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
        if fmt == "yuv420p":
            import cv2

            return cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2RGB_I420)
    return frame.to_ndarray(format="rgb24")  # anything else: swscale, slower but general


def decode_frames(
    path: str | Path, fps: float, from_timestamp: float, to_timestamp: float, episode_index: int | None = None
) -> np.ndarray:
    """Frames with from_timestamp <= t < to_timestamp as (T, H, W, 3) uint8.

    Raises DatasetError naming the file and the episode when the file is missing or cannot be decoded.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise DatasetError("video file missing", path, episode_index)
    first = round(from_timestamp * fps)
    last = round(to_timestamp * fps)  # exclusive
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError("no video stream", path, episode_index)
            stream = container.streams.video[0]
            if first > 0:
                # Seek to the keyframe at or before the first wanted frame, then decode forward.
                container.seek(int(from_timestamp / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                k = round(float(frame.pts * stream.time_base) * fps)
                if k < first:
                    continue
                if k >= last:
                    break
                frames.append(frame_to_rgb(frame))
    except DatasetError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise DatasetError(f"cannot decode video ({type(exc).__name__}: {exc})", path, episode_index) from exc
    if not frames:
        raise DatasetError(f"no frames decoded in [{from_timestamp:.4f}, {to_timestamp:.4f}) s", path, episode_index)
    return np.stack(frames)


def decode_parquet_images(rows, key: str, path: str | Path, episode_index: int | None = None) -> np.ndarray:
    """An ``image`` feature stored in the data parquet (LeRobot with ``use_videos=False``: a struct of
    PNG/JPEG ``bytes`` and ``path`` per frame) -> (T, H, W, 3) uint8 RGB."""
    import cv2

    frames = []
    for t, cell in enumerate(rows.column(key).to_pylist()):
        data = cell.get("bytes") if isinstance(cell, dict) else None
        if not data:
            raise DatasetError(f"{key}: frame {t} has no embedded image bytes (an external file is not read)", path,
                               episode_index)
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise DatasetError(f"{key}: frame {t} is not a decodable image", path, episode_index)
        frames.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    if len({f.shape for f in frames}) > 1:
        raise DatasetError(f"{key}: frames of different sizes", path, episode_index)
    return np.stack(frames)
