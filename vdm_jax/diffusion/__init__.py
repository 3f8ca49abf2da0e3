"""Continuous-time diffusion math: schedules, parameterizations, losses, samplers, guidance.

Pure functions over jax arrays (keyword-only where they take several arrays); no Flax modules.
Conventions: t in [0, 1] with t = 0 clean and t = 1 noise; logsnr decreasing in t; arrays are
[B, ...] with a per-example logsnr [B]; model_fn(z, logsnr, cond) -> output in the chosen
parameterization ('v' | 'eps' | 'x' | 'flow').
"""
from vdm_jax.diffusion.guidance import (CLIPS, GUIDANCE_SCHEDULES, combine_guidance,
                                        dynamic_threshold, guidance_weight_at,
                                        guided_model_output, predict_x_and_eps,
                                        static_threshold, threshold_x)
from vdm_jax.diffusion.losses import (T_SAMPLINGS, WEIGHTINGS, diffusion_loss, log_loss_weight,
                                      loss_weight, packed_diffusion_loss, resolve_weighting,
                                      sample_t, t_sampling_from_config, weighted_mean)
from vdm_jax.diffusion.parameterization import (PREDICTIONS, from_x_and_eps,
                                                predict_eps_from_flow, predict_eps_from_v,
                                                predict_eps_from_x, predict_flow_from_eps,
                                                predict_flow_from_v, predict_flow_from_x,
                                                predict_flow_from_x_and_eps, predict_v_from_eps,
                                                predict_v_from_flow, predict_v_from_x,
                                                predict_v_from_x_and_eps, predict_x_from_eps,
                                                predict_x_from_flow, predict_x_from_v,
                                                predict_z_from_x_and_eps, to_x_and_eps)
from vdm_jax.diffusion.reconstruction import (OBSERVATION_METHODS, Observation, downsample,
                                              keep_observed, observe,
                                              reconstruction_error,
                                              reconstruction_guided_prediction,
                                              replace_observed)
from vdm_jax.diffusion.samplers import (DDPM_VARIANCES, FLOW_SAMPLERS, LOOPS,
                                        SAMPLE_STATIC_ARGNAMES, SAMPLERS, ddim_step,
                                        ddpm_posterior, ddpm_step, euler_step, sample,
                                        step_times)
from vdm_jax.diffusion.schedules import (SCHEDULES, LogSNRSchedule, alpha_sigma,
                                         broadcast_logsnr, cosine_logsnr, cosine_t_from_logsnr,
                                         flow_scale, flow_t_from_logsnr, linear_logsnr,
                                         linear_t_from_logsnr, q_sample,
                                         rectified_flow_logsnr, rectified_flow_t_from_logsnr,
                                         resolution_shift, schedule_from_config, time_grid,
                                         time_shift)
