"""Measuring a model: size, parameters and MACs (``metrics``), the structure that maps channels to layers
(``structure``), latency on the target (``spec``, ``latency``, ``runtimes``), its prediction (``predictor``,
``latency_table``) and the gate that pauses training on a node while its latency is timed (``gate``)."""
