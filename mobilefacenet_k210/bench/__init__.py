"""`make bench`: every measurable target, measured into ``bench/results.*`` and docs/ pages.

``run`` (the stages and the results table), ``targets`` (the figures each result is held to),
``provenance`` (machine and time of a measurement), ``students`` (teacher vs from-scratch vs
distilled students), ``distill_trend`` (distillation over data budgets), ``pretrained`` (the
pretrained route over seeds), ``recordio`` (InsightFace RecordIO vs a folder of JPEGs), ``scale``
(how cost grows with size), ``throughput`` (training images/s, float32 vs mixed precision).
Nothing is imported here, so that ``mfk210 --help`` does not load TensorFlow.
"""
