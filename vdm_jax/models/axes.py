"""Logical axis names, the one place they are defined.

Parameters are annotated with `nn.with_logical_partitioning(init, (AXIS, ...))` and large
activations with `nn.with_logical_constraint(x, (AXIS, ...))`. A config's
`sharding.logical_axis_rules` maps these names onto the mesh axes `data`, `fsdp`, `tensor`
(see `vdm_jax/sharding.py`). Names not in the rules are replicated.
"""

# Activations.
BATCH = "batch"
FRAMES = "frames"
HEIGHT = "height"
WIDTH = "width"
CHANNELS = "channels"          # activation feature dimension
TOKENS = "tokens"              # attention sequence (flattened positions or frames)
TEXT_LENGTH = "text_length"    # text token dimension

# Parameters.
EMBED = "embed"                # input feature dimension of a dense / conv kernel
MLP = "mlp"                    # output feature dimension of a dense / conv kernel
HEADS = "heads"                # attention heads
KV = "kv"                      # per-head feature dimension
NORM = "norm"                  # scale / bias vectors of norms
CONV_SPACE = "conv_space"      # spatial or temporal extent of a conv kernel (never sharded)
VOCAB = "vocab"
REL_BUCKETS = "rel_buckets"    # relative position buckets

# Mesh axis names.
MESH_DATA = "data"
MESH_FSDP = "fsdp"
MESH_TENSOR = "tensor"
MESH_AXES = (MESH_DATA, MESH_FSDP, MESH_TENSOR)

# The default table: data parallel over (data, fsdp), parameters fully sharded over fsdp,
# attention heads and MLP outputs over tensor. Configs copy and change this.
DEFAULT_RULES = (
    (BATCH, (MESH_DATA, MESH_FSDP)),
    (EMBED, MESH_FSDP),
    (MLP, MESH_TENSOR),
    (HEADS, MESH_TENSOR),
    (KV, None),
    (NORM, None),
    (CONV_SPACE, None),
    (VOCAB, MESH_TENSOR),
    (REL_BUCKETS, None),
    (FRAMES, None),
    (HEIGHT, None),
    (WIDTH, None),
    (CHANNELS, None),
    (TOKENS, None),
    (TEXT_LENGTH, None),
)
