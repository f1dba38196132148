"""Activation steering baselines of the Linear-AcT paper, folded into plain checkpoints.

``iti`` (ITI-c: per-head mass-mean-shift directions on the attention heads' outputs, the top
heads chosen by a linear probe, added to ``o_proj``'s input), ``actadd`` (the residual-stream
difference of a contrast prompt pair added after one block), ``variants`` and ``pipeline``.
See docs/steering.md.
"""
