"""bdsel: Bayesian data selection for accelerated training.

Online batch selection (Deng, Cui, Zhu, NeurIPS 2023): each step draws a candidate batch,
scores every candidate with a zero-shot predictor and a last-layer Laplace posterior of the
model being trained, and trains on the best few.
"""

__version__ = "0.1.0"
