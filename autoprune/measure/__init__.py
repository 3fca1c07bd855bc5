"""Measuring a model: size, parameters and MACs (``metrics``), latency (``latency``) and the gate that pauses
training on a node while its latency is timed (``gate``)."""
