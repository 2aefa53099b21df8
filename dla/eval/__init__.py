"""Evaluation: synthetic benchmarks (``dla.eval.synthetic``) and their metrics (``dla.eval.metrics``).

The synthetic generators need only numpy; the metrics accept numpy arrays or torch tensors.
"""
