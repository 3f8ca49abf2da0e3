"""Training: sharded train state, the pure train step, checkpoints, metrics and the loop.

  state.py       TrainState, EMA rule, sharded init / abstract restore targets
  optimizer.py   optax optimizer and learning-rate schedule from `config.train`
  step.py        train_step (accumulation, clipping, EMA, CFG dropout, NaN skip), ShardedFn
  objective.py   batch -> model inputs (through the model family) -> diffusion loss
  config_checks.py  checks of the `train` section and the objective's cross-section keys
  checkpoint.py  orbax Checkpointer (state + grain iterator + config), compatibility checks;
                 restore_ema_params (what sampling restores)
  metrics.py, flops.py   throughput / MFU, log line, TensorBoard + metrics.jsonl
  preemption.py  SIGTERM handling agreed across processes
  stage_sampler.py  sample_settings, make_sample_fn: a stage's jitted sampler (guidance,
                 residual SR), shared with vdm_jax.sample
  samples.py     periodic samples from the EMA parameters (written with vdm_jax.media)
  inputs.py      text store, grain iterator, global batch layout
  runner.py      StepRunner: the step loop shared by training and distillation (lagged
                 metrics, checkpoint cadence, hooks, preemption, non-finite streaks)
  loop.py        Trainer / train_and_evaluate(config, workdir) on the runner
"""
