"""The loss landscape of a network: Hessian spectrum, critical points, loss surfaces.

Every function takes any ``torch.nn.Module``, a loss ``loss_fn(model(x), y)`` that
averages over its batch, and data as an ``(x, y)`` pair or an iterable of ``(x, y)``
batches (the dataset loss is the example-weighted mean of the batch losses). The model
is evaluated in eval mode on copies of its weights and comes back bit for bit as it was
(weights, buffers, training flags, ``requires_grad``). Seeds go to a
``torch.Generator``; the global RNG is never touched.

- :mod:`~babysit.landscape.hvp`: :class:`HessianOperator`, :func:`hessian_vector_product`
- :mod:`~babysit.landscape.lanczos`: the Lanczos iteration (full re-orthogonalisation)
- :mod:`~babysit.landscape.spectrum`: :func:`hessian_eigenvalues`, :func:`hessian_trace`,
  :func:`spectral_density`
- :mod:`~babysit.landscape.critical`: :func:`classify_critical_point`
- :mod:`~babysit.landscape.jacobian`: :func:`jacobian_singular_values`,
  :func:`weight_singular_values` (dynamical isometry)
- :mod:`~babysit.landscape.surface`: :func:`random_directions`, :func:`trajectory_directions`,
  :func:`loss_surface`, :func:`interpolate`
- :mod:`~babysit.landscape.run`: ``landscape_run`` (``babysit landscape RUN``:
  landscape.json, figures, report); :mod:`~babysit.landscape.figures`. Import them from
  there: they sit in a layer above the rest (they read runs and write reports), and this
  package imports only the numerics above, so a lower layer may use those (the sharpness
  check's callback tracks lambda_max with :mod:`~babysit.landscape.spectrum` during
  training) without importing the run path back (tests/test_layers.py).

Example
-------
>>> import torch
>>> from torch import nn
>>> from babysit import landscape
>>> _ = torch.manual_seed(0)
>>> model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
>>> data = (torch.randn(40, 3).double(), torch.randn(40, 1).double())
>>> top = landscape.hessian_eigenvalues(model, nn.MSELoss(), data, k=1, which="top")
>>> trace = landscape.hessian_trace(model, nn.MSELoss(), data, probes=10)
>>> bool(top.eigenvalues[0] > 0), trace.probes
(True, 10)
"""

from babysit.landscape.critical import CriticalPoint, classify_critical_point
from babysit.landscape.hvp import HessianOperator, hessian_vector_product, select_parameters
from babysit.landscape.jacobian import (
    JacobianSpectrum,
    jacobian_singular_values,
    weight_singular_values,
)
from babysit.landscape.spectrum import (
    HessianEigen,
    SpectralDensity,
    TraceEstimate,
    hessian_eigenvalues,
    hessian_trace,
    spectral_density,
)
from babysit.landscape.surface import (
    Interpolation,
    LossSurface,
    Trajectory,
    interpolate,
    loss_surface,
    random_directions,
    trajectory_directions,
)

__all__ = [
    "CriticalPoint",
    "HessianEigen",
    "HessianOperator",
    "Interpolation",
    "JacobianSpectrum",
    "LossSurface",
    "SpectralDensity",
    "TraceEstimate",
    "Trajectory",
    "classify_critical_point",
    "hessian_eigenvalues",
    "hessian_trace",
    "hessian_vector_product",
    "interpolate",
    "jacobian_singular_values",
    "loss_surface",
    "random_directions",
    "select_parameters",
    "spectral_density",
    "trajectory_directions",
    "weight_singular_values",
]
