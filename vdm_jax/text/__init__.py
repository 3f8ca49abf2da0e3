"""Text conditioning: tokenizers, Hugging Face safetensors loading, the `TextEncoder` wrapper and
the precomputed `TextEmbeddingStore`. The Linen modules live in `vdm_jax/models/text_encoders.py`.

  encoder = load_text_encoder(config.text)
  emb, mask = encoder.encode(["a red circle moving left", ""])  # [2, L, D] f32, [2, L] bool
  store = TextEmbeddingStore.build(encoder, captions); store.save(path)
  emb, mask = TextEmbeddingStore.load(path).lookup(caption)       # [L, D], [L]
  store = load_or_build_store(config.text, captions)  # via text.store_path, if set
  emb, mask = encoder.encode_prompts(user_prompts)  # sampling: refuses "" / blank prompts

"" is the null condition of classifier-free guidance: zero embedding, all-False mask. A user's
prompts go through `encode_prompts` (or, before any encoder is loaded,
`check_prompts(prompts, allow_empty=False)`), which refuses an empty or blank one naming its
index. Cut prompts and characters the tokenizer does not know are warned about, never silent.
A store file whose checksums do not match raises `CorruptStoreError` (delete it: it is rebuilt).
"""
from vdm_jax.text.encoder import load_text_encoder
from vdm_jax.text.encoder import packaged_minilm_dir
from vdm_jax.text.encoder import PromptTruncatedWarning
from vdm_jax.text.encoder import PromptUnknownTokensWarning
from vdm_jax.text.encoder import TextEncoder
from vdm_jax.text.store import CorruptStoreError
from vdm_jax.text.store import load_or_build_store
from vdm_jax.text.store import TextEmbeddingStore
from vdm_jax.text.tokenization import check_prompts
from vdm_jax.text.tokenization import EmptyPromptError

__all__ = ["CorruptStoreError", "EmptyPromptError", "PromptTruncatedWarning",
           "PromptUnknownTokensWarning", "TextEncoder", "TextEmbeddingStore", "check_prompts",
           "load_or_build_store", "load_text_encoder", "packaged_minilm_dir"]
