"""Tokenizers for the text encoders: a Hugging Face `tokenizer.json` (WordPiece for MiniLM) and a
SentencePiece `spiece.model` (T5), with one interface.

`tokenizer(prompts, max_length) -> Tokenized(ids [B, L] int32, mask [B, L] bool, truncated [B])`
pads to L = max_length and cuts longer prompts the way Hugging Face does (the special tokens,
[CLS] ... [SEP] or ... </s>, are kept).
"""
from typing import NamedTuple, Sequence

import numpy as np


class Tokenized(NamedTuple):
  ids: np.ndarray        # [B, L] int32, padded with the pad id
  mask: np.ndarray       # [B, L] bool, True on real tokens (specials included)
  truncated: np.ndarray  # [B] bool, True where the prompt was cut to fit max_length


def check_prompts(prompts):
  """Returns `prompts` as a list of str, or raises TypeError saying what was passed instead."""
  if isinstance(prompts, (str, bytes)):
    raise TypeError(f"prompts must be a list of strings, not a single {type(prompts).__name__} "
                    f"({prompts!r:.60}); wrap it: [prompt]")
  prompts = list(prompts)
  bad = [p for p in prompts if not isinstance(p, str)]
  if bad:
    raise TypeError(f"every prompt must be a str; got {type(bad[0]).__name__} {bad[0]!r:.60}")
  return [str(p) for p in prompts]  # plain str (numpy str_ too)


def _pack(sequences, max_length, pad_id, truncated):
  ids = np.full((len(sequences), max_length), pad_id, np.int32)
  mask = np.zeros((len(sequences), max_length), bool)
  for row, seq in enumerate(sequences):
    ids[row, :len(seq)] = seq
    mask[row, :len(seq)] = True
  return Tokenized(ids, mask, np.asarray(truncated, bool).reshape(len(sequences)))


class JsonTokenizer:
  """A Hugging Face `tokenizer.json` read with the `tokenizers` library (its post-processor adds
  the special tokens; truncation keeps them)."""

  def __init__(self, path, *, pad_id=None):
    import tokenizers  # pylint: disable=g-import-not-at-top
    self._tok = tokenizers.Tokenizer.from_file(path)
    self._tok.no_padding()
    padding = self._tok.padding
    self.pad_id = int(pad_id if pad_id is not None else (padding or {}).get("pad_id", 0))
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    self._max_length = None

  def __call__(self, prompts: Sequence[str], max_length: int) -> Tokenized:
    prompts = check_prompts(prompts)
    if self._max_length != max_length:
      self._tok.enable_truncation(max_length)
      self._max_length = max_length
    encodings = self._tok.encode_batch(prompts)
    return _pack([e.ids for e in encodings], max_length, self.pad_id,
                 [bool(e.overflowing) for e in encodings])


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

  def __call__(self, prompts: Sequence[str], max_length: int) -> Tokenized:
    prompts = check_prompts(prompts)
    if max_length < 1:
      raise ValueError(f"max_length must be >= 1 (room for </s>), got {max_length}")
    pieces = self._sp.encode(prompts)
    sequences = [p[:max_length - 1] + [self.eos_id] for p in pieces]
    return _pack(sequences, max_length, self.pad_id, [len(p) + 1 > max_length for p in pieces])
