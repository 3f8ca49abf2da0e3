"""Training: sharded train state, the pure train step, checkpoints, metrics and the loop.

  state.py       TrainState, EMA rule, sharded init / abstract restore targets
  optimizer.py   optax optimizer and learning-rate schedule from `config.train`
  step.py        train_step (accumulation, clipping, EMA, CFG dropout, NaN skip), ShardedFn
  objective.py   batch -> SpaceTimeUNet inputs -> diffusion loss
  checkpoint.py  orbax Checkpointer (state + grain iterator + config), compatibility checks
  metrics.py, flops.py   throughput / MFU, log line, TensorBoard + metrics.jsonl
  preemption.py  SIGTERM handling agreed across processes
  samples.py, video_writer.py   periodic samples from the EMA parameters
  inputs.py      text store, grain iterator, global batch layout
  loop.py        train_and_evaluate(config, workdir)
"""
