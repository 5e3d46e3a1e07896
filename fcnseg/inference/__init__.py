"""Inference: ``load_engine`` picks the backend and precision once (loader.py); ``segment`` runs
a model over images with TTA or windows (segment.py); evaluate, predict and the task check
(verify.py) build on them, and so do ``fcnseg serve`` and the exporters' checks."""
