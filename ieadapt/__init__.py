"""IE-Adapt (arXiv 2504.12027, §5): entropy-driven layer selection, enhancement and editing.

So far: layer selection from stored statistics or measured perturbation effects (``select``).
Torch-free at import.
"""
