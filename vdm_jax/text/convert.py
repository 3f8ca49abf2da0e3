"""Hugging Face configs and safetensors weights -> our Linen text encoders and their params.

`bert_from_config` / `t5_from_config` build the module from a `config.json` dict;
`load_params(module, checkpoint, family)` reads every parameter the module declares from the
checkpoint (PyTorch `Linear` weights are `[out, in]`; ours are `[in, out]`, with heads split
out), checks shapes, casts to the module's `param_dtype`, and returns `{"params": ...}`.
"""
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.models import text_encoders


def bert_from_config(config, *, dtype=jnp.float32, param_dtype=jnp.float32):
  """A `BertEncoder` from a Hugging Face BERT `config.json` dict."""
  if config.get("model_type", "bert") != "bert":
    raise ValueError(f"text.encoder='minilm' expects a BERT checkpoint, but config.json has "
                     f"model_type={config.get('model_type')!r}")
  if config.get("hidden_act", "gelu") != "gelu":
    raise ValueError(f"unsupported BERT hidden_act {config['hidden_act']!r}; only 'gelu'")
  if config.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError("unsupported BERT position_embedding_type "
                     f"{config['position_embedding_type']!r}; only 'absolute'")
  if config["hidden_size"] % config["num_attention_heads"]:
    raise ValueError("BERT hidden_size must be a multiple of num_attention_heads")
  return text_encoders.BertEncoder(
      vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
      num_layers=config["num_hidden_layers"], num_heads=config["num_attention_heads"],
      intermediate_size=config["intermediate_size"],
      max_position_embeddings=config["max_position_embeddings"],
      type_vocab_size=config.get("type_vocab_size", 2),
      layer_norm_eps=config.get("layer_norm_eps", 1e-12), dtype=dtype, param_dtype=param_dtype)


def t5_from_config(config, *, dtype=jnp.float32, param_dtype=jnp.float32):
  """A `T5Encoder` from a Hugging Face T5 `config.json` dict (T5 v1.1, also original T5)."""
  if config.get("model_type", "t5") != "t5":
    raise ValueError(f"text.encoder='t5' expects a T5 checkpoint, but config.json has "
                     f"model_type={config.get('model_type')!r} (umT5/mT5 are not supported)")
  return text_encoders.T5Encoder(
      vocab_size=config["vocab_size"], d_model=config["d_model"], d_kv=config["d_kv"],
      num_heads=config["num_heads"], d_ff=config["d_ff"], num_layers=config["num_layers"],
      relative_attention_num_buckets=config.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=config.get("relative_attention_max_distance", 128),
      layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-6),
      feed_forward_proj=config.get("feed_forward_proj", "relu"), dtype=dtype,
      param_dtype=param_dtype)


# (regex over our param path, Hugging Face key templates to try, how to convert).
# "T": transpose a PyTorch Linear weight; then every tensor is reshaped to our shape.
_BERT_RULES = (
    (r"(word|position|token_type)_embeddings/embedding", ["embeddings.{0}_embeddings.weight"], ""),
    (r"embeddings_norm/scale", ["embeddings.LayerNorm.weight", "embeddings.LayerNorm.gamma"], ""),
    (r"embeddings_norm/bias", ["embeddings.LayerNorm.bias", "embeddings.LayerNorm.beta"], ""),
    (r"layer_(\d+)_attention/(query|key|value)/kernel",
     ["encoder.layer.{0}.attention.self.{1}.weight"], "T"),
    (r"layer_(\d+)_attention/(query|key|value)/bias",
     ["encoder.layer.{0}.attention.self.{1}.bias"], ""),
    (r"layer_(\d+)_attention/out/kernel", ["encoder.layer.{0}.attention.output.dense.weight"], "T"),
    (r"layer_(\d+)_attention/out/bias", ["encoder.layer.{0}.attention.output.dense.bias"], ""),
    (r"layer_(\d+)_attention_norm/scale",
     ["encoder.layer.{0}.attention.output.LayerNorm.weight",
      "encoder.layer.{0}.attention.output.LayerNorm.gamma"], ""),
    (r"layer_(\d+)_attention_norm/bias",
     ["encoder.layer.{0}.attention.output.LayerNorm.bias",
      "encoder.layer.{0}.attention.output.LayerNorm.beta"], ""),
    (r"layer_(\d+)_intermediate/kernel", ["encoder.layer.{0}.intermediate.dense.weight"], "T"),
    (r"layer_(\d+)_intermediate/bias", ["encoder.layer.{0}.intermediate.dense.bias"], ""),
    (r"layer_(\d+)_output/kernel", ["encoder.layer.{0}.output.dense.weight"], "T"),
    (r"layer_(\d+)_output/bias", ["encoder.layer.{0}.output.dense.bias"], ""),
    (r"layer_(\d+)_output_norm/scale", ["encoder.layer.{0}.output.LayerNorm.weight",
                                        "encoder.layer.{0}.output.LayerNorm.gamma"], ""),
    (r"layer_(\d+)_output_norm/bias", ["encoder.layer.{0}.output.LayerNorm.bias",
                                       "encoder.layer.{0}.output.LayerNorm.beta"], ""),
)

_T5_RULES = (
    (r"shared/embedding", ["shared.weight", "encoder.embed_tokens.weight"], ""),
    (r"relative_attention_bias",
     ["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"], ""),
    (r"block_(\d+)_attention_norm/scale", ["encoder.block.{0}.layer.0.layer_norm.weight"], ""),
    (r"block_(\d+)_attention/query/kernel", ["encoder.block.{0}.layer.0.SelfAttention.q.weight"],
     "T"),
    (r"block_(\d+)_attention/key/kernel", ["encoder.block.{0}.layer.0.SelfAttention.k.weight"],
     "T"),
    (r"block_(\d+)_attention/value/kernel", ["encoder.block.{0}.layer.0.SelfAttention.v.weight"],
     "T"),
    (r"block_(\d+)_attention/out/kernel", ["encoder.block.{0}.layer.0.SelfAttention.o.weight"],
     "T"),
    (r"block_(\d+)_mlp_norm/scale", ["encoder.block.{0}.layer.1.layer_norm.weight"], ""),
    (r"block_(\d+)_wi_0/kernel", ["encoder.block.{0}.layer.1.DenseReluDense.wi_0.weight",
                                  "encoder.block.{0}.layer.1.DenseReluDense.wi.weight"], "T"),
    (r"block_(\d+)_wi_1/kernel", ["encoder.block.{0}.layer.1.DenseReluDense.wi_1.weight"], "T"),
    (r"block_(\d+)_wo/kernel", ["encoder.block.{0}.layer.1.DenseReluDense.wo.weight"], "T"),
    (r"final_norm/scale", ["encoder.final_layer_norm.weight"], ""),
)

_RULES = {"bert": _BERT_RULES, "t5": _T5_RULES}


def abstract_params(module):
  """Shapes and dtypes of `module`'s params, `{"params": ...}` of ShapeDtypeStruct, unboxed."""
  ids = jnp.zeros((1, 2), jnp.int32)
  tree = jax.eval_shape(module.init, jax.random.key(0), ids, jnp.ones((1, 2), bool))
  return nn.meta.unbox(tree)


def _prefix(checkpoint, family):
  """The key prefix of the encoder ('' or e.g. 'bert.' for BERT heads' checkpoints)."""
  probe = "embeddings.word_embeddings.weight" if family == "bert" else "shared.weight"
  for key in checkpoint.keys():
    if key.endswith(probe):
      return key[: -len(probe)]
  return ""


def _convert(array, transform, shape, key, path):
  if transform == "T":
    array = array.T
    fits = array.shape in ((shape[0], int(np.prod(shape[1:]))),
                           (int(np.prod(shape[:-1])), shape[-1]))
  else:
    fits = array.size == int(np.prod(shape)) and (array.ndim == 1 or array.shape == shape)
  if not fits:
    stored = array.T.shape if transform else array.shape
    raise ValueError(f"checkpoint tensor {key!r} has shape {stored}, which does not fit "
                     f"parameter {path} of shape {shape} that config.json asks for: the config "
                     "and the weights are from different models")
  return array.reshape(shape)


def load_params(module, checkpoint, family, *, put=jnp.asarray):
  """Reads `module`'s params ('bert' or 't5' naming) from a `SafetensorsCheckpoint`.

  Returns `{"params": tree}` with leaves `put(np.ndarray in module.param_dtype)`. Raises a
  ValueError naming the missing or misshapen tensors when the checkpoint is another model's.
  """
  rules = [(re.compile(pattern + "$"), keys, transform)
           for pattern, keys, transform in _RULES[family]]
  prefix = _prefix(checkpoint, family)
  flat = flax.traverse_util.flatten_dict(abstract_params(module)["params"])
  out, missing = {}, []
  for path, spec in flat.items():
    name = "/".join(path)
    match = [(m, keys, t) for m, keys, t in ((r.match(name), k, t) for r, k, t in rules) if m]
    if not match:
      raise AssertionError(f"no conversion rule for parameter {name}")  # a bug in this file
    groups, templates, transform = match[0][0].groups(), match[0][1], match[0][2]
    candidates = [prefix + t.format(*groups) for t in templates]
    key = next((k for k in candidates if k in checkpoint), None)
    if key is None:
      missing.append(candidates[0])
      continue
    array = _convert(checkpoint.get(key), transform, tuple(spec.shape), key, name)
    out[path] = put(np.asarray(array, dtype=spec.dtype))
  if missing:
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    raise ValueError(f"the checkpoint at {checkpoint.directory!r} lacks {len(missing)} tensors "
                     f"that a {family} encoder with this config.json needs: {shown}")
  return {"params": flax.traverse_util.unflatten_dict(out)}
