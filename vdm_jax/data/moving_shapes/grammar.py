"""The procedural "moving shapes" domain: vocabulary, clip specs, captions (grammar), labels.

Pure numpy (no tfds / grain), so the renderer (`render`) and the detectors import it freely.

Geometry, exactly (a detector inverts these definitions):
  * A frame is `height` x `width` pixels. Positions are FRAME FRACTIONS: `x` in [0, 1] runs from
    the left edge of the frame to the right edge, `y` in [0, 1] from the top edge to the bottom.
    Pixel (row i, column j) covers x in [j/W, (j+1)/W] and y in [i/H, (i+1)/H]; its centre is
    x = (j + 0.5) / W, y = (i + 0.5) / H.  So a centre (x, y) sits at pixel coordinates
    (col, row) = (x * W - 0.5, y * H - 0.5) in "pixel-centre" indexing.
  * An object's RADIUS `r_px = SIZES[size] * min(H, W)` pixels is the half-extent of its
    axis-aligned bounding box: every shape lies inside the square [cx - r, cx + r] x
    [cy - r, cy + r] (circle, square, diamond, cross and triangle touch all four sides; the star
    touches the top, the hexagon the left and right). Shapes are never rotated; the triangle
    and the star point up; unit polygons are in `render.POLYGONS`. In frame fractions
    the half-extents are `rx = r_px / W`, `ry = r_px / H`.
  * Time of frame k is `t_k = k / fps` seconds (t_0 = 0). Each object moves with a constant
    velocity `(vx, vy)` in FRAME FRACTIONS PER SECOND (x to the right, y DOWN): its unfolded
    centre is `(x0 + vx * t, y0 + vy * t)`.  Straight motions have `|v| = SPEEDS[speed]` along
    the unit direction `MOTIONS[motion]` (diagonals move `speed / sqrt(2)` along each axis);
    they start where they stay fully in frame for the whole clip. "bouncing" objects move at
    `SPEEDS[speed]` along a random oblique direction 20-35 degrees from an axis (never near a
    diagonal, so a bounce that meets no edge within the clip still differs from a diagonal
    straight motion) and reflect off the frame edges: each
    coordinate is folded into [r, 1 - r] (a triangle wave, see `object_centers`). "still"
    objects have v = 0 and no speed.  Because positions depend on continuous time, the same
    spec rendered at twice the fps with 2T - 1 frames gives the original frames at even indices.
  * Rendering (`render.render`): each object is drawn with coverage anti-aliasing
    (`supersample` x `supersample` sub-samples per pixel):
    `pixel = alpha * COLORS[color] + (1 - alpha) * below`, where `below` is the background
    (`BACKGROUNDS[background]`) or an earlier object; object 0 is drawn first, object 1 on top.
    Fully covered pixels have exactly the object's colour.
  * Two objects in one clip have different colours and are sampled (when possible) so that
    their bounding disks of radius `r_px` never overlap during the clip.
"""
import dataclasses
import math
import re
from typing import Iterable, Optional, Sequence

import numpy as np

# ----------------------------------------------------------------------------- vocabulary

COLORS = {  # name -> RGB uint8; pairwise L2 distance >= 180
    "red": np.array([230, 30, 30], np.uint8),
    "green": np.array([30, 200, 40], np.uint8),
    "blue": np.array([40, 90, 240], np.uint8),
    "yellow": np.array([240, 220, 40], np.uint8),
    "magenta": np.array([220, 50, 220], np.uint8),
    "cyan": np.array([40, 210, 220], np.uint8),
}
BACKGROUNDS = {  # name -> RGB uint8; far from every object colour
    "black": np.array([0, 0, 0], np.uint8),
    "gray": np.array([110, 110, 110], np.uint8),
    "white": np.array([255, 255, 255], np.uint8),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star", "hexagon")  # render.POLYGONS
SIZES = {"small": 0.1, "medium": 0.15, "large": 0.2}  # bounding half-extent / min(H, W)
_S2 = 1.0 / math.sqrt(2.0)
MOTIONS = {  # name -> unit direction (dx, dy), y down; None = random oblique direction
    "left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0),
    "up-left": (-_S2, -_S2), "up-right": (_S2, -_S2),
    "down-left": (-_S2, _S2), "down-right": (_S2, _S2),
    "bouncing": None, "still": (0.0, 0.0),
}
SPEEDS = {"slow": 0.1, "fast": 0.25}  # frame fractions per second
SPEED_WORDS = {"slow": "slowly", "fast": "quickly"}
MAX_OBJECTS = 2

COLOR_NAMES = tuple(COLORS)
BACKGROUND_NAMES = tuple(BACKGROUNDS)
SIZE_NAMES = tuple(SIZES)
MOTION_NAMES = tuple(MOTIONS)
SPEED_NAMES = tuple(SPEEDS)
# Attribute kind of every vocabulary word (all words are unique across kinds).
ATTRIBUTE_OF = {
    **{n: "color" for n in COLOR_NAMES}, **{n: "shape" for n in SHAPES},
    **{n: "size" for n in SIZE_NAMES}, **{n: "motion" for n in MOTION_NAMES},
    **{n: "speed" for n in SPEED_NAMES}, **{n: "background" for n in BACKGROUND_NAMES},
}
assert len(ATTRIBUTE_OF) == (len(COLORS) + len(SHAPES) + len(SIZES) + len(MOTIONS)
                             + len(SPEEDS) + len(BACKGROUNDS))


# ----------------------------------------------------------------------------- specs


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
  """One object: attributes (vocabulary names) and its motion in frame fractions / second."""
  shape: str
  color: str
  size: str
  motion: str
  speed: Optional[str]   # None for "still"
  x0: float              # centre at t = 0, frame fractions
  y0: float
  vx: float = 0.0        # velocity, frame fractions per second (unfolded for "bouncing")
  vy: float = 0.0

  def attributes(self) -> dict:
    return dict(shape=self.shape, color=self.color, size=self.size, motion=self.motion,
                speed=self.speed)


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """A whole clip: one or two objects on a background, with its time and frame geometry."""
  objects: tuple
  background: str
  fps: float
  frames: int
  height: int
  width: int

  @property
  def is_image(self) -> bool:
    return self.frames == 1


def half_extents(size: str, height: int, width: int) -> tuple:
  """Bounding half-extents (rx, ry) of an object of `size`, in frame fractions."""
  r_px = SIZES[size] * min(height, width)
  return r_px / width, r_px / height


def validate_geometry(*, frames: int, fps: float, height: int, width: int) -> None:
  """Raises ValueError if the fastest, largest straight motion cannot stay in frame."""
  if frames < 1 or height < 4 or width < 4 or fps <= 0:
    raise ValueError(f"Bad clip geometry frames={frames} fps={fps} {height}x{width}: need "
                     "frames >= 1, fps > 0 and height, width >= 4.")
  duration = (frames - 1) / fps
  rx, ry = half_extents("large", height, width)
  room = min(1 - 2 * rx, 1 - 2 * ry)
  if max(SPEEDS.values()) * duration > room:
    raise ValueError(
        f"A {frames}-frame clip at {fps} fps lasts {duration:.2f}s, too long for a fast object "
        f"({max(SPEEDS.values())} frame/s) to stay in frame (room {room:.2f}). Use at most "
        f"{int(room / max(SPEEDS.values()) * fps) + 1} frames at this fps, or a higher fps.")


def object_centers(spec: ClipSpec, times=None) -> np.ndarray:
  """Object centres in frame fractions at `times` (seconds; default: the frame times).

  Returns [T, num_objects, 2] float64 (x, y). Bouncing objects fold each coordinate into
  [r, 1 - r]: with u = (p_unfolded - r) mod 2L and L = 1 - 2r, p = r + min(u, 2L - u).
  """
  if times is None:
    times = np.arange(spec.frames) / spec.fps
  times = np.asarray(times, np.float64)
  out = np.zeros((times.shape[0], len(spec.objects), 2))
  for n, o in enumerate(spec.objects):
    px, py = o.x0 + o.vx * times, o.y0 + o.vy * times
    if o.motion == "bouncing":
      rx, ry = half_extents(o.size, spec.height, spec.width)
      px, py = _fold(px, rx, 1 - rx), _fold(py, ry, 1 - ry)
    out[:, n, 0], out[:, n, 1] = px, py
  return out


def _fold(p, lo, hi):
  length = hi - lo
  u = np.mod(p - lo, 2 * length)
  return lo + np.minimum(u, 2 * length - u)


def is_held_out(spec: ClipSpec, held_out: Iterable[Sequence[str]]) -> bool:
  """True if any object has every attribute of any held-out combo, e.g. ("red", "triangle")."""
  for combo in held_out:
    for o in spec.objects:
      attrs = dict(o.attributes(), background=spec.background)
      if all(attrs[ATTRIBUTE_OF[w]] == w for w in combo):
        return True
  return False


def check_combos(held_out: Iterable[Sequence[str]]) -> tuple:
  """Validates held-out combos (tuples of vocabulary words of different kinds)."""
  out = []
  for combo in held_out:
    combo = tuple(combo)
    unknown = [w for w in combo if w not in ATTRIBUTE_OF]
    kinds = [ATTRIBUTE_OF[w] for w in combo if w in ATTRIBUTE_OF]
    if unknown or not combo or len(set(kinds)) != len(kinds):
      raise ValueError(f"Bad held-out combo {combo}: each word must be one of "
                       f"{sorted(ATTRIBUTE_OF)} and of a different kind (unknown: {unknown}).")
    out.append(combo)
  return tuple(out)


# The attribute kinds a vocabulary restricts, and every word of each (in vocabulary order).
VOCABULARY = {"color": COLOR_NAMES, "shape": tuple(SHAPES), "size": SIZE_NAMES,
              "motion": MOTION_NAMES, "speed": SPEED_NAMES, "background": BACKGROUND_NAMES}


def check_vocabulary(vocabulary=None) -> dict:
  """The words clips may use: {kind: tuple of words} for every kind of `VOCABULARY`.

  `vocabulary` maps kinds to allowed words (a missing kind or an empty tuple allows every word
  of that kind; a single word may be a string); None allows everything. Raises ValueError for
  an unknown kind or a word of another kind.
  """
  out = dict(VOCABULARY)
  for kind, words in dict(vocabulary or {}).items():
    if kind not in VOCABULARY:
      raise ValueError(f"Unknown vocabulary kind {kind!r}; one of {tuple(VOCABULARY)}.")
    words = (words,) if isinstance(words, str) else tuple(words)
    bad = [w for w in words if w not in VOCABULARY[kind]]
    if bad:
      raise ValueError(f"vocabulary {kind}: {bad} are not {kind} words; choose from "
                       f"{VOCABULARY[kind]}.")
    if words:   # kept in vocabulary order, duplicates dropped
      out[kind] = tuple(w for w in VOCABULARY[kind] if w in words)
  return out


def _sample_attributes(rng, fixed: dict, vocab: dict) -> dict:
  motions = vocab["motion"]
  if "speed" in fixed:  # a speed word needs a moving object
    motions = tuple(m for m in motions if m != "still") or MOTION_NAMES[:1]
  motion = fixed.get("motion", motions[rng.integers(len(motions))])
  speeds = vocab["speed"]
  speed = None if motion == "still" else fixed.get("speed", speeds[rng.integers(len(speeds))])
  shapes, colors, sizes = vocab["shape"], vocab["color"], vocab["size"]
  return dict(shape=fixed.get("shape", shapes[rng.integers(len(shapes))]),
              color=fixed.get("color", colors[rng.integers(len(colors))]),
              size=fixed.get("size", sizes[rng.integers(len(sizes))]),
              motion=motion, speed=speed)


def _place(rng, attrs: dict, *, duration, height, width) -> ObjectSpec:
  """Samples a start position and velocity so the object stays in frame for `duration`."""
  rx, ry = half_extents(attrs["size"], height, width)
  motion = attrs["motion"]
  speed = SPEEDS[attrs["speed"]] if attrs["speed"] else 0.0
  if motion == "bouncing":
    off_axis = rng.uniform(20.0, 35.0)  # degrees; 10+ degrees away from every diagonal
    if rng.integers(2):
      off_axis = 90.0 - off_axis
    angle = math.radians(off_axis + 90.0 * rng.integers(4))
    vx, vy = speed * math.cos(angle), speed * math.sin(angle)
    return ObjectSpec(**attrs, x0=float(rng.uniform(rx, 1 - rx)),
                      y0=float(rng.uniform(ry, 1 - ry)), vx=vx, vy=vy)
  dx, dy = MOTIONS[motion]
  vx, vy = speed * dx, speed * dy
  pos = []
  for v, r in ((vx, rx), (vy, ry)):
    lo, hi = r - min(0.0, v * duration), 1 - r - max(0.0, v * duration)
    if lo > hi + 1e-9:
      raise ValueError(f"A {motion} {attrs['speed']} object cannot stay in frame for "
                       f"{duration:.2f}s; see validate_geometry.")
    pos.append(float(rng.uniform(lo, max(lo, hi))))
  return ObjectSpec(**attrs, x0=pos[0], y0=pos[1], vx=vx, vy=vy)


def _overlaps(spec: ClipSpec) -> bool:
  if len(spec.objects) < 2:
    return False
  c = object_centers(spec) * np.array([spec.width, spec.height])
  dist = np.linalg.norm(c[:, 0] - c[:, 1], axis=-1)
  m = min(spec.height, spec.width)
  return bool(np.any(dist < (SIZES[spec.objects[0].size] + SIZES[spec.objects[1].size]) * m))


def sample_spec(rng: np.random.Generator, *, frames: int, height: int, width: int, fps: float,
                num_objects: Optional[int] = None, two_object_prob: float = 0.3,
                held_out: Iterable[Sequence[str]] = (), include_held_out: bool = False,
                image: bool = False, max_tries: int = 100, vocabulary=None) -> ClipSpec:
  """Samples a clip spec, deterministically from `rng`.

  Args:
    rng: numpy Generator (e.g. `np.random.default_rng(seed)`).
    frames, height, width, fps: clip geometry; `image=True` forces frames = 1, all objects
      "still" (an image; positions uniform over the frame).
    num_objects: 1 or 2; None = 2 with probability `two_object_prob`.
    held_out: combos of vocabulary words, e.g. [("red", "triangle"), ("blue", "left")].
    include_held_out: False = never produce a held-out combo (rejection sampling); True = object
      0 carries one held-out combo chosen uniformly (for the compositional test split). For
      images, combos with a motion or speed word are ignored.
    vocabulary: {kind: allowed words} (see `check_vocabulary`); None = every word. Words a
      held-out combo fixes are used even outside it.
  """
  held_out = check_combos(held_out)
  vocab = check_vocabulary(vocabulary)
  if image:  # motion words cannot apply to an image
    frames = 1
    held_out = tuple(c for c in held_out
                     if not any(ATTRIBUTE_OF[w] in ("motion", "speed") for w in c))
  validate_geometry(frames=frames, fps=fps, height=height, width=width)
  if include_held_out and not held_out:
    raise ValueError("include_held_out=True needs at least one held-out combo.")
  duration = (frames - 1) / fps
  n = num_objects or (2 if rng.random() < two_object_prob else 1)
  if n not in (1, 2):
    raise ValueError(f"num_objects must be 1 or 2, got {n}.")
  if n == 2 and len(vocab["color"]) < 2:
    raise ValueError("Two objects need two colours; the vocabulary allows only "
                     f"{vocab['color']} (or set two_object_prob = 0).")
  spec = None
  for _ in range(max_tries):
    background = vocab["background"][rng.integers(len(vocab["background"]))]
    fixed = [{} for _ in range(n)]
    if include_held_out:
      combo = held_out[rng.integers(len(held_out))]
      fixed[0] = {ATTRIBUTE_OF[w]: w for w in combo}
      background = fixed[0].pop("background", background)
    if image:
      for f in fixed:
        f["motion"] = "still"
    attrs = [_sample_attributes(rng, f, vocab) for f in fixed]
    if n == 2 and attrs[0]["color"] == attrs[1]["color"]:
      continue
    objects = tuple(_place(rng, a, duration=duration, height=height, width=width)
                    for a in attrs)
    spec = ClipSpec(objects=objects, background=background, fps=float(fps), frames=frames,
                    height=height, width=width)
    if not include_held_out and is_held_out(spec, held_out):
      continue
    if not _overlaps(spec):
      return spec
  if spec is None or (not include_held_out and is_held_out(spec, held_out)):
    raise ValueError(f"Could not sample a clip outside the held-out combos {held_out} in "
                     f"{max_tries} tries; hold out fewer combinations.")
  return spec  # objects may overlap: accepted after max_tries


# ----------------------------------------------------------------------------- captions


def _object_phrase(o: ObjectSpec, with_motion: bool) -> str:
  words = f"a {o.size} {o.color} {o.shape}"
  if not with_motion:
    return words
  if o.motion == "still":
    return words + " standing still"
  verb = "bouncing around" if o.motion == "bouncing" else f"moving {o.motion}"
  return f"{words} {verb} {SPEED_WORDS[o.speed]}"


def caption(spec: ClipSpec, with_motion: Optional[bool] = None) -> str:
  """The clip's caption, e.g. "a small red circle moving left slowly on a black background".

  Grammar: OBJ (" and " OBJ)? " on a " BG " background", with
  OBJ = "a " SIZE " " COLOR " " SHAPE [" " MOTION_PHRASE], MOTION_PHRASE =
  "moving " DIRECTION " " SPEEDWORD | "bouncing around " SPEEDWORD | "standing still".
  Images (frames == 1, or with_motion=False) omit the motion phrase.
  """
  if with_motion is None:
    with_motion = not spec.is_image
  objs = " and ".join(_object_phrase(o, with_motion) for o in spec.objects)
  return f"{objs} on a {spec.background} background"


def _WORD(names) -> str:  # pylint: disable=invalid-name
  """A regex alternation of `names`, longest first (so "up-left" wins over "up")."""
  return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


_OBJ_RE = (rf"a (?P<size{{i}}>{_WORD(SIZE_NAMES)}) (?P<color{{i}}>{_WORD(COLOR_NAMES)}) "
           rf"(?P<shape{{i}}>{_WORD(SHAPES)})(?: (?:moving (?P<dir{{i}}>{_WORD(MOTION_NAMES)}) "
           rf"|(?P<bounce{{i}}>bouncing around) )(?P<speed{{i}}>{_WORD(SPEED_WORDS.values())})"
           rf"|(?P<still{{i}}> standing still))?")
_CAPTION_RE = re.compile("^" + _OBJ_RE.format(i=0) + "(?: and " + _OBJ_RE.format(i=1) + ")?"
                         + rf" on a (?P<background>{_WORD(BACKGROUND_NAMES)}) background$")


def parse_caption(text: str) -> dict:
  """Inverts `caption`: {"background": str, "objects": [{shape, color, size, motion, speed}]}.

  `motion` and `speed` are None when the caption has no motion phrase. Raises ValueError on
  text outside the grammar.
  """
  m = _CAPTION_RE.match(text.strip())
  if not m:
    raise ValueError(f"Caption outside the moving-shapes grammar: {text!r}")
  g, objects = m.groupdict(), []
  speed_of = {w: s for s, w in SPEED_WORDS.items()}
  for i in range(MAX_OBJECTS):
    if g[f"shape{i}"] is None:
      continue
    motion = ("bouncing" if g[f"bounce{i}"] else g[f"dir{i}"] or
              ("still" if g[f"still{i}"] else None))
    speed = speed_of[g[f"speed{i}"]] if g[f"speed{i}"] else None
    objects.append(dict(shape=g[f"shape{i}"], color=g[f"color{i}"], size=g[f"size{i}"],
                        motion=motion, speed=speed))
  return dict(background=g["background"], objects=objects)


# ----------------------------------------------------------------------------- labels

_INT_FIELDS = (("shape", SHAPES), ("color", COLOR_NAMES), ("size", SIZE_NAMES),
               ("motion", MOTION_NAMES), ("speed", SPEED_NAMES))
_FLOAT_FIELDS = ("x0", "y0", "vx", "vy")


def label_keys() -> dict:
  """Flat label key -> numpy dtype (the tfds Scalar features of `labels_to_dict`)."""
  keys = {"num_objects": np.int32, "background": np.int32}
  for i in range(MAX_OBJECTS):
    keys.update({f"obj{i}_{f}": np.int32 for f, _ in _INT_FIELDS})
    keys.update({f"obj{i}_{f}": np.float32 for f in _FLOAT_FIELDS})
  return keys


def labels_to_dict(spec: ClipSpec) -> dict:
  """Flat structured labels: vocabulary indices (-1 = absent / no speed) and float motion.

  Keys: num_objects, background (index into BACKGROUND_NAMES) and, for i < MAX_OBJECTS,
  obj{i}_shape / _color / _size / _motion / _speed (indices into SHAPES, COLOR_NAMES,
  SIZE_NAMES, MOTION_NAMES, SPEED_NAMES) and obj{i}_x0 / _y0 / _vx / _vy (frame fractions and
  frame fractions per second, see the module docstring; 0 for absent objects).
  """
  d = {"num_objects": np.int32(len(spec.objects)),
       "background": np.int32(BACKGROUND_NAMES.index(spec.background))}
  for i in range(MAX_OBJECTS):
    o = spec.objects[i] if i < len(spec.objects) else None
    for f, names in _INT_FIELDS:
      value = getattr(o, f) if o else None
      d[f"obj{i}_{f}"] = np.int32(names.index(value) if value is not None else -1)
    for f in _FLOAT_FIELDS:
      d[f"obj{i}_{f}"] = np.float32(getattr(o, f) if o else 0.0)
  return d


def labels_from_dict(d: dict, *, fps: float, frames: int, height: int, width: int) -> ClipSpec:
  """Inverts `labels_to_dict` (positions and velocities at float32 precision)."""
  objects = []
  for i in range(int(d["num_objects"])):
    attrs = {}
    for f, names in _INT_FIELDS:
      idx = int(d[f"obj{i}_{f}"])
      attrs[f] = names[idx] if idx >= 0 else None
    attrs.update({f: float(d[f"obj{i}_{f}"]) for f in _FLOAT_FIELDS})
    objects.append(ObjectSpec(**attrs))
  return ClipSpec(objects=tuple(objects), background=BACKGROUND_NAMES[int(d["background"])],
                  fps=float(fps), frames=int(frames), height=int(height), width=int(width))
