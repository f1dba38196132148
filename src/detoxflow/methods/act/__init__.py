"""Activation transport (AcT; Rodriguez et al., ICLR 2025): Linear-AcT and Mean-AcT.

``estimators`` (per-unit maps), ``points`` (which modules, and folding an affine map of a
module's output into the weights), ``hooks`` (the same map at run time, with the reference's
quantile clipping), ``incremental`` (module-by-module estimation), ``variants`` (names the
config asks for), ``pipeline`` (the CLI's steps). See docs/act.md.
"""
