"""A 1-D two-component Gaussian mixture shared by the sampler tests: its parameters and the
estimate of its weights, means and stds from samples (the samplers are checked against it with
each one's exact denoiser or velocity field)."""
import numpy as np

MIX_W = np.array([0.3, 0.7])
MIX_MU = np.array([-0.6, 0.5])
MIX_SD = np.array([0.1, 0.2])


def mixture_statistics(x):
  """Weights, means and stds of the components, estimated with the true responsibilities.

  With gamma_k(x) the posterior of component k under the true mixture, E[gamma_k(x)] = w_k and
  E[gamma_k(x) f(x)] = w_k E_k[f(x)], so these soft estimates are unbiased for exact samples
  (hard assignment by a threshold would misfile tail samples and bias the stds).
  """
  x = np.asarray(x, np.float64).reshape(-1, 1)
  log_p = np.log(MIX_W) - np.log(MIX_SD) - 0.5 * (x - MIX_MU)**2 / MIX_SD**2
  gamma = np.exp(log_p - log_p.max(axis=1, keepdims=True))
  gamma /= gamma.sum(axis=1, keepdims=True)
  weights = gamma.mean(axis=0)
  means = (gamma * x).sum(axis=0) / gamma.sum(axis=0)
  stds = np.sqrt((gamma * (x - means)**2).sum(axis=0) / gamma.sum(axis=0))
  return weights, means, stds
