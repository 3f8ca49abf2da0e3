"""Video transformer `model` sections: the default (CPU scale), a tiny one for tests, and the
paper-scale presets (CogVideoX, Wan 2.1, Latte).

    cfg = presets.tiny()                       # a `model` ConfigDict
    cfg = presets.paper("wan2.1-1.3b")         # paper-scale section
    n = registry.family(cfg).count_params(frames=..., height=..., width=...)  # no allocation
"""
import ml_collections


def default_section():
  """The transformer family's `model` section: every key at its default (a CPU-scale base that
  trains on the demo base's 8x16x16 moving shapes: 512 tokens)."""
  m = ml_collections.ConfigDict()
  m.family = "dit"                        # the model family (vdm_jax/models/registry.py)
  m.patch_size = (1, 2, 2)                # (time, height, width) of a spacetime patch
  m.hidden_dim = 128                      # token width
  m.depth = 6                             # blocks
  m.num_heads = 4                         # head dim = hidden_dim / num_heads (even, >= 6)
  m.mlp_dim = 512                         # MLP hidden width
  m.attention_layout = "full"             # full: 3D attention over all tokens | alternating:
  #   spatial (within a frame) and temporal (across frames) blocks in turn (Latte)
  m.text_conditioning = "cross"           # cross: cross-attention (Wan, PixArt) | joint:
  #   text tokens join the self-attention with their own adaLN (CogVideoX MM-DiT) | none
  m.text_embed_dim = 384                  # width of the text encoder's token embeddings
  m.text_projection = "linear"            # text tokens -> hidden_dim: linear | mlp (Wan)
  m.text_pooled_conditioning = True       # masked-mean text added to the conditioning embedding
  m.modulation = "block"                  # adaLN from each block's Dense (DiT, CogVideoX) |
  #   shared: one Dense for all blocks + a learned table per block (Wan)
  m.qk_norm = "rms"                       # per-head query/key norm: rms | layer | none
  m.rope_theta = 10000.0                  # 3D RoPE base (rope.py)
  m.cond_embed_dim = 128                  # conditioning embedding width (logSNR, fps, ...)
  m.fps_conditioning = True
  m.lowres_conditioning = "none"          # none | spatial | temporal (SR stages)
  m.lowres_temporal_upsample = "repeat"   # temporal SR: repeat | linear
  m.cond_aug_conditioning = False
  m.guidance_weight_conditioning = False  # guided distillation students
  m.frame_mask_conditioning = False       # masked frame interpolation: C + 1 input channels
  m.attention_impl = "xla"                # xla | cudnn | splash
  m.dtype = "float32"                     # compute dtype (bfloat16 on accelerators)
  m.param_dtype = "float32"
  m.remat = "none"                        # none | block | full
  m.scan_blocks = False                   # one nn.scan over stacked block parameters (paper
  #   scale: compile time independent of depth)
  m.out_channels = 3                      # channels predicted per pixel
  return m


def tiny(**overrides):
  """A test-sized transformer: 2 blocks of width 24 (4 heads of 6)."""
  m = default_section()
  m.patch_size = (1, 2, 2)
  m.hidden_dim = 24
  m.depth = 2
  m.num_heads = 4
  m.mlp_dim = 48
  m.cond_embed_dim = 16
  m.text_embed_dim = 16
  m.update(overrides)
  return m


# Paper-scale models: (latent geometry frames, height, width, channels; text tokens; the
# architecture's exact parameter count; the published label), and our section for each. The
# exact counts are the reference implementations' parameters (diffusers / the original code,
# nn.Parameters only; fixed sin-cos tables are not parameters), which the published labels
# round: "2B" is 1.69e9, "5B" 5.57e9, "1.3B" 1.42e9. experiments/dit_params/ sets ours beside
# both. Latent geometry: a 49-frame 480x720 clip through CogVideoX's VAE (4x time, 8x space,
# 16 channels: 13 x 60 x 90), 81 frames of 480x832 through Wan's (21 x 60 x 104), Latte's 16
# frames of 256x256 through Stable Diffusion's per-frame VAE (16 x 32 x 32 x 4).
PAPER = {
    "cogvideox-2b": dict(frames=13, height=60, width=90, channels=16, text_length=226,
                         exact_params=1_693_783_872, published="2B"),
    "cogvideox-5b": dict(frames=13, height=60, width=90, channels=16, text_length=226,
                         exact_params=5_570_283_072, published="5B"),
    "wan2.1-1.3b": dict(frames=21, height=60, width=104, channels=16, text_length=512,
                        exact_params=1_418_996_800, published="1.3B"),
    "wan2.1-14b": dict(frames=21, height=60, width=104, channels=16, text_length=512,
                       exact_params=14_288_491_584, published="14B"),
    "latte-xl": dict(frames=16, height=32, width=32, channels=4, text_length=0,
                     exact_params=673_681_568, published="673.68M"),
}
T5_XXL_DIM = 4096


def paper(name, **overrides):
  """The `model` section of a paper-scale transformer (PAPER). What differs from the reference
  and changes the count by < 1%: our conditioning MLP embeds its sinusoid at its own width
  (CogVideoX: 512 not d; Wan, Latte: d not 256), our final modulation is a Dense of the
  embedding (Wan: a learned table), Wan's query/key RMSNorm scales each head's features (not
  the full width), and the adaLN LayerNorms have no affine parameters (CogVideoX's have)."""
  if name not in PAPER:
    raise ValueError(f"unknown paper-scale transformer {name!r}; one of {tuple(PAPER)}")
  m = default_section()
  m.dtype = "bfloat16"
  m.fps_conditioning = False
  m.text_pooled_conditioning = False
  m.text_embed_dim = T5_XXL_DIM
  m.patch_size = (1, 2, 2)
  m.out_channels = PAPER[name]["channels"]
  if name.startswith("cogvideox"):
    heads, depth = {"cogvideox-2b": (30, 30), "cogvideox-5b": (48, 42)}[name]
    m.hidden_dim, m.num_heads, m.depth = 64 * heads, heads, depth
    m.mlp_dim = 4 * m.hidden_dim
    m.text_conditioning = "joint"             # MM-DiT: text and video in one attention
    m.text_projection = "linear"
    m.modulation = "block"                    # "expert" adaLN: 12 vectors per block
    m.qk_norm = "layer"
    m.cond_embed_dim = 512
  elif name.startswith("wan"):
    dim, heads, depth, ffn = {"wan2.1-1.3b": (1536, 12, 30, 8960),
                              "wan2.1-14b": (5120, 40, 40, 13824)}[name]
    m.hidden_dim, m.num_heads, m.depth, m.mlp_dim = dim, heads, depth, ffn
    m.text_conditioning = "cross"
    m.text_projection = "mlp"
    m.modulation = "shared"
    m.qk_norm = "rms"
    m.cond_embed_dim = dim
  else:                                       # Latte-XL/2, variant 1, unconditional
    m.hidden_dim, m.num_heads, m.depth, m.mlp_dim = 1152, 16, 28, 4608
    m.attention_layout = "alternating"
    m.text_conditioning = "none"
    m.modulation = "block"
    m.qk_norm = "none"
    m.cond_embed_dim = 1152
    m.out_channels = 8                        # learned variance: mean and variance channels
  m.update(overrides)
  return m
