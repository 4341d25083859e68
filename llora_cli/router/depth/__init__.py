"""Dynamic depth (issue 14): decoder layers replaced, per request, by tiny bottleneck adapters or skipped.

``layers`` (the layer adapter and the context manager that swaps a set of decoder layers of a transformers
Llama model and always restores them), ``distill`` (training each layer's adapter on the base's own correct
answers; the ``layer-adapters`` artifact) and ``topk`` (a differentiable top-k by Sinkhorn for the layer head).
torch and transformers are imported inside functions or by these modules only when a depth command runs.
"""
