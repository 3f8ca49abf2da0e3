"""Video files (GIF, MP4) and a static HTML gallery of samples and figures.

`write_gallery` writes `index.html` that opens straight from disk (no server): every video is a
GIF beside it, referenced by a relative path. Per prompt, a row shows the video after each
cascade stage and, when given, a real clip of the same prompt; below come tables of figures.
"""
import html
import os
from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np


def _check_video(video) -> np.ndarray:
  video = np.asarray(video)
  if video.ndim != 4 or video.shape[-1] not in (1, 3):
    raise ValueError(f"a video must be [T, H, W, 3] (or 1 channel), got shape {video.shape}")
  if video.dtype != np.uint8:
    raise ValueError(f"a video must be uint8 in [0, 255], got {video.dtype}; convert with "
                     "np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8) for [-1, 1]")
  return np.repeat(video, 3, axis=-1) if video.shape[-1] == 1 else video


def write_gif(path: str, video, fps: float, scale: int = 1) -> str:
  """Writes uint8 [T, H, W, 3] as a looping GIF (Pillow), each pixel `scale` x `scale`."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  video = _check_video(video)
  if scale > 1:
    video = video.repeat(scale, axis=1).repeat(scale, axis=2)
  frames = [Image.fromarray(f) for f in video]
  duration_ms = max(int(round(1000.0 / fps)), 20)  # browsers clamp shorter delays
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0,
                 optimize=False, disposal=1)
  return path


def write_mp4(path: str, video, fps: float, scale: int = 1) -> str:
  """Writes uint8 [T, H, W, 3] as H.264 MP4 with the ffmpeg that imageio-ffmpeg ships.

  Sides are scaled by `scale` and then padded to even sizes (yuv420p needs them).
  """
  import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
  video = _check_video(video)
  if scale > 1:
    video = video.repeat(scale, axis=1).repeat(scale, axis=2)
  _, h, w, _ = video.shape
  video = np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                          pixelformat="yuv420p", macro_block_size=1,
                          output_params=["-crf", "12"]) as writer:
    for frame in video:
      writer.append_data(frame)
  return path


def write_video(path: str, video, fps: float, scale: int = 1) -> str:
  """Writes a video by extension: .gif (Pillow) or .mp4 (ffmpeg)."""
  ext = os.path.splitext(path)[1].lower()
  if ext == ".gif":
    return write_gif(path, video, fps, scale)
  if ext == ".mp4":
    return write_mp4(path, video, fps, scale)
  raise ValueError(f"unknown video extension {ext!r} in {path}: use .gif or .mp4")


def _fmt(value: Any) -> str:
  if isinstance(value, (float, np.floating)):
    return f"{float(value):.4g}"
  return str(value)


def figure_table(title: str, figure: Mapping[str, Any]) -> str:
  """A dict as an HTML table: {row: value} -> 2 columns; {row: {col: value}} -> a grid."""
  rows = list(figure.items())
  nested = rows and all(isinstance(v, Mapping) for _, v in rows)
  parts = [f"<h3>{html.escape(title)}</h3>", "<table>"]
  if nested:
    cols = []
    for _, v in rows:
      cols += [c for c in v if c not in cols]
    parts.append("<tr><th></th>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
                 + "</tr>")
    for r, v in rows:
      cells = "".join(f"<td>{html.escape(_fmt(v[c])) if c in v else ''}</td>" for c in cols)
      parts.append(f"<tr><th>{html.escape(str(r))}</th>{cells}</tr>")
  else:
    for r, v in rows:
      parts.append(f"<tr><th>{html.escape(str(r))}</th><td>{html.escape(_fmt(v))}</td></tr>")
  parts.append("</table>")
  return "\n".join(parts)


def _relative(out_dir: str, path: str) -> str:
  """`path` (absolute, or relative to the current directory, as `write_gif` takes it) as the
  page in `out_dir` must link it."""
  return os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir)).replace(os.sep, "/")


def _video_cell(out_dir: str, label: str, path: Optional[str]) -> str:
  if not path:
    return f"<td class='vid'><div class='cap'>{html.escape(label)}</div>(none)</td>"
  src = html.escape(_relative(out_dir, path), quote=True)
  return (f"<td class='vid'><div class='cap'>{html.escape(label)}</div>"
          f"<img src=\"{src}\" alt=\"{html.escape(label, quote=True)}\"></td>")


_STYLE = """body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
td.vid img{image-rendering:pixelated;width:128px;height:auto}.cap{font-size:80%;color:#555}"""


def write_gallery(out_dir: str, entries: Sequence[Mapping[str, Any]],
                  figures: Optional[Mapping[str, Mapping[str, Any]]] = None,
                  title: str = "vdm_jax samples") -> str:
  """Writes `out_dir/index.html`; returns its path.

  Args:
    out_dir: the folder of the page; GIF paths are written relative to it.
    entries: per prompt, {"prompt": str, "stages": [(stage name, gif path), ...],
      "real": gif path or None (optional)}; paths absolute or relative to the current
      directory (what `write_gif` returns).
    figures: {figure title: table dict} (see `figure_table`).
    title: the page title.
  """
  os.makedirs(out_dir, exist_ok=True)
  parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
           f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>"]
  if entries:
    parts.append("<h2>Samples</h2><table>")
    for e in entries:
      stages: Sequence[Tuple[str, str]] = e.get("stages", ())
      cells = "".join(_video_cell(out_dir, name, path) for name, path in stages)
      if "real" in e:
        cells += _video_cell(out_dir, "real clip", e.get("real"))
      parts.append(f"<tr><th>{html.escape(str(e.get('prompt', '')))}</th>{cells}</tr>")
    parts.append("</table>")
  if figures:
    parts.append("<h2>Figures</h2>")
    parts += [figure_table(name, fig) for name, fig in figures.items()]
  parts.append("</body></html>")
  path = os.path.join(out_dir, "index.html")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(parts) + "\n")
  return path
