"""What the model families' specs share: option tables and the dtype properties.

    DTYPES["bfloat16"]              # model.dtype / model.param_dtype -> the jnp dtype
    REMAT_POLICIES["block"]         # model.remat -> the jax.checkpoint policy ('none': no remat)
    class MySpec(DtypeProperties)   # adds compute_dtype / params_dtype from its dtype fields

The tables are the one definition: the U-Net, the video transformer and the autoencoders read
them, so an option added here is an option of every family.
"""
import jax
import jax.numpy as jnp

LOWRES_CONDITIONING = ("none", "spatial", "temporal")
LOWRES_TEMPORAL_UPSAMPLE = ("repeat", "linear")
# Kernels of the attention dispatcher (vdm_jax/models/attention.py).
ATTENTION_IMPLS = ("xla", "cudnn", "splash")
REMAT = ("none", "block", "full")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# Remat policies per `model.remat`:
#   none   keep every activation for the backward pass (fastest, most memory);
#   block  rematerialize each residual/attention block, keeping only the results of its
#          weight matmuls (dense and attention projections); convs, norms, nonlinearities and
#          attention probabilities are recomputed;
#   full   rematerialize each block keeping nothing inside it (only block inputs are stored).
REMAT_POLICIES = {
    "block": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


class DtypeProperties:
  """Mixin for a spec with string fields `dtype` (compute) and `param_dtype` (parameters)."""

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def params_dtype(self):
    return DTYPES[self.param_dtype]
