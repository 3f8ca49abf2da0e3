"""Logical axis names, the one place they are defined.

Parameters are annotated with `nn.with_logical_partitioning(init, (AXIS, ...))` and large
activations with `nn.with_logical_constraint(x, (AXIS, ...))`. A config's
`sharding.logical_axis_rules` maps these names onto the mesh axes `data`, `fsdp`, `tensor`,
`sequence` (see `vdm_jax/sharding.py`). Names not in the rules are replicated.
"""

# Activations.
BATCH = "batch"
FRAMES = "frames"
HEIGHT = "height"
WIDTH = "width"
CHANNELS = "channels"          # activation feature dimension
TOKENS = "tokens"              # attention sequence (flattened positions or frames)
TEXT_LENGTH = "text_length"    # text token dimension
# Inside the video transformer's self-attention: the token and head axes of queries, keys and
# values. Sequence parallelism maps them (sharding.sequence_parallel): Ulysses shards the heads
# over `sequence` there (an all-to-all from the token-sharded stream), ring attention the
# tokens.
ATTN_TOKENS = "attention_tokens"
ATTN_HEADS = "attention_heads"

# Parameters.
EMBED = "embed"                # input feature dimension of a dense / conv kernel
MLP = "mlp"                    # output feature dimension of a dense / conv kernel
HEADS = "heads"                # attention heads
KV = "kv"                      # per-head feature dimension
NORM = "norm"                  # scale / bias vectors of norms
CONV_SPACE = "conv_space"      # spatial or temporal extent of a conv kernel (never sharded)
VOCAB = "vocab"
REL_BUCKETS = "rel_buckets"    # relative position buckets
LAYERS = "layers"              # the stacked-blocks axis of scanned parameters (never sharded)

# Mesh axis names.
MESH_DATA = "data"
MESH_FSDP = "fsdp"
MESH_TENSOR = "tensor"
MESH_SEQUENCE = "sequence"     # sequence (context) parallelism of the transformer's tokens
MESH_AXES = (MESH_DATA, MESH_FSDP, MESH_TENSOR, MESH_SEQUENCE)

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
    (LAYERS, None),
    (FRAMES, None),
    (HEIGHT, None),
    (WIDTH, None),
    (CHANNELS, None),
    (TOKENS, None),
    (TEXT_LENGTH, None),
    (ATTN_TOKENS, None),
    (ATTN_HEADS, MESH_TENSOR),
)

# What `sharding.sequence_parallel` puts before the rules (first match wins): the stream's
# tokens over `sequence`, and inside attention either the heads (Ulysses: XLA turns the layout
# change into all-to-alls) or the tokens (ring attention, `attention.ring_attention`); the
# parameters are fully sharded over `fsdp` and `sequence` together (FSDP over every device
# that holds a part of a clip).
_SEQUENCE_FSDP = ((EMBED, (MESH_FSDP, MESH_SEQUENCE)),)
SEQUENCE_PARALLEL_RULES = {
    "none": (),
    "ulysses": _SEQUENCE_FSDP + ((TOKENS, MESH_SEQUENCE), (ATTN_TOKENS, None),
                                 (ATTN_HEADS, (MESH_TENSOR, MESH_SEQUENCE))),
    "ring": _SEQUENCE_FSDP + ((TOKENS, MESH_SEQUENCE), (ATTN_TOKENS, MESH_SEQUENCE),
                              (ATTN_HEADS, MESH_TENSOR)),
}
