"""Tokenizers for the text encoders: a Hugging Face `tokenizer.json` (WordPiece for MiniLM) and a
SentencePiece `spiece.model` (T5), with one interface.

`tokenizer(prompts, max_length) -> Tokenized(ids [B, L] int32, mask [B, L] bool, truncated [B],
dropped [B], unknown [B])` pads to L = max_length and cuts longer prompts the way Hugging Face
does (the special tokens, [CLS] ... [SEP] or ... </s>, are kept), counting the tokens cut off
(`dropped`) and listing the pieces of text that became the unknown token (`unknown`).

`check_prompts(prompts)` accepts any list of str ("" is the null condition of classifier-free
guidance); `check_prompts(prompts, allow_empty=False)` is the check for prompts a user typed,
which refuses an empty or blank prompt with `EmptyPromptError` naming its index.
"""
import json
from typing import NamedTuple, Optional, Sequence

import numpy as np

from vdm_jax import errors


class EmptyPromptError(errors.UserError, ValueError):
  """A user's prompt that is empty or only whitespace."""


class Tokenized(NamedTuple):
  ids: np.ndarray        # [B, L] int32, padded with the pad id
  mask: np.ndarray       # [B, L] bool, True on real tokens (specials included)
  truncated: np.ndarray  # [B] bool, True where the prompt was cut to fit max_length
  dropped: Optional[np.ndarray] = None  # [B] int32, tokens cut off (0 where not truncated)
  unknown: Optional[tuple] = None       # [B] tuples of the text pieces that became <unk>


def check_prompts(prompts, *, allow_empty=True):
  """Returns `prompts` as a list of str.

  Raises:
    TypeError: `prompts` is a single string, or an entry is not a str.
    EmptyPromptError (a ValueError): with `allow_empty=False`, an entry is "" or whitespace,
      naming its index (the null condition is for the sampler's unconditional branch, never a
      prompt the user gives).
  """
  if isinstance(prompts, (str, bytes)):
    raise TypeError(f"prompts must be a list of strings, not a single {type(prompts).__name__} "
                    f"({prompts!r:.60}); wrap it: [prompt]")
  prompts = list(prompts)
  bad = [p for p in prompts if not isinstance(p, str)]
  if bad:
    raise TypeError(f"every prompt must be a str; got {type(bad[0]).__name__} {bad[0]!r:.60}")
  prompts = [str(p) for p in prompts]  # plain str (numpy str_ too)
  if not allow_empty:
    blank = [i for i, p in enumerate(prompts) if not p.strip()]
    if blank:
      which = ", ".join(map(str, blank[:10])) + (", ..." if len(blank) > 10 else "")
      which = (f"prompt {which} is" if len(blank) == 1 else f"prompts {which} are")
      raise EmptyPromptError(
          f"{which} empty or blank ({prompts[blank[0]]!r}; indices count from 0, of "
          f"{len(prompts)} prompts): give every video a prompt that describes it.")
  return prompts


def _pack(sequences, max_length, pad_id, truncated, dropped=None, unknown=None):
  n = len(sequences)
  ids = np.full((n, max_length), pad_id, np.int32)
  mask = np.zeros((n, max_length), bool)
  for row, seq in enumerate(sequences):
    ids[row, :len(seq)] = seq
    mask[row, :len(seq)] = True
  dropped = np.zeros((n,), np.int32) if dropped is None else np.asarray(dropped, np.int32)
  unknown = tuple(() for _ in range(n)) if unknown is None else tuple(map(tuple, unknown))
  return Tokenized(ids, mask, np.asarray(truncated, bool).reshape(n), dropped.reshape(n),
                   unknown)


def _unique(pieces):
  return tuple(dict.fromkeys(p for p in pieces if p))


class JsonTokenizer:
  """A Hugging Face `tokenizer.json` read with the `tokenizers` library (its post-processor adds
  the special tokens; truncation keeps them)."""

  def __init__(self, path, *, pad_id=None):
    import tokenizers  # pylint: disable=g-import-not-at-top
    self._tok = tokenizers.Tokenizer.from_file(path)
    self._tok.no_padding()
    padding = self._tok.padding
    self._full = tokenizers.Tokenizer.from_str(self._tok.to_str())  # never truncates
    self._full.no_truncation()
    self.pad_id = int(pad_id if pad_id is not None else (padding or {}).get("pad_id", 0))
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    self.unk_id = self._unk_id()
    self._max_length = None

  def _unk_id(self):
    """The id of the model's unknown token, or None when it has none (byte-level BPE)."""
    model = json.loads(self._tok.to_str()).get("model", {})
    if model.get("unk_id") is not None:  # Unigram
      return int(model["unk_id"])
    if model.get("unk_token"):  # WordPiece, BPE
      return self._tok.token_to_id(model["unk_token"])
    return None

  def __call__(self, prompts: Sequence[str], max_length: int) -> Tokenized:
    prompts = check_prompts(prompts)
    if self._max_length != max_length:
      self._tok.enable_truncation(max_length)
      self._max_length = max_length
    encodings = self._tok.encode_batch(prompts)
    truncated = [bool(e.overflowing) for e in encodings]
    dropped = [len(self._full.encode(p).ids) - len(e.ids) if cut else 0
               for p, e, cut in zip(prompts, encodings, truncated)]
    unknown = []
    for p, e in zip(prompts, encodings):
      # Offsets are character spans of the original prompt (a whole word for WordPiece).
      unknown.append(_unique(p[a:b] for i, (a, b) in zip(e.ids, e.offsets) if i == self.unk_id)
                     if self.unk_id is not None else ())
    return _pack([e.ids for e in encodings], max_length, self.pad_id, truncated, dropped,
                 unknown)


class SentencePieceTokenizer:
  """A SentencePiece model (`spiece.model`), T5 style: pieces, then `</s>`; no BOS."""

  def __init__(self, path, *, pad_id=None, eos_id=None):
    import sentencepiece  # pylint: disable=g-import-not-at-top
    self._sp = sentencepiece.SentencePieceProcessor(model_file=path)
    self.pad_id = int(pad_id if pad_id is not None else max(self._sp.pad_id(), 0))
    self.eos_id = int(eos_id if eos_id is not None else self._sp.eos_id())
    if self.eos_id < 0:
      raise ValueError(f"{path} defines no end-of-sequence piece and config.json gives no "
                       "eos_token_id; T5 needs one")
    self.vocab_size = self._sp.get_piece_size()
    self.unk_id = self._sp.unk_id()

  def _unknown(self, prompt):
    """The pieces of `prompt` that SentencePiece maps to its unknown id."""
    proto = self._sp.encode(prompt, out_type="proto")
    return _unique(p.surface for p in proto.pieces if p.id == self.unk_id)

  def __call__(self, prompts: Sequence[str], max_length: int) -> Tokenized:
    prompts = check_prompts(prompts)
    if max_length < 1:
      raise ValueError(f"max_length must be >= 1 (room for </s>), got {max_length}")
    pieces = self._sp.encode(prompts)
    sequences = [p[:max_length - 1] + [self.eos_id] for p in pieces]
    unknown = [self._unknown(prompt) if self.unk_id in p else ()
               for prompt, p in zip(prompts, pieces)]
    return _pack(sequences, max_length, self.pad_id, [len(p) + 1 > max_length for p in pieces],
                 [max(len(p) + 1 - max_length, 0) for p in pieces], unknown)
