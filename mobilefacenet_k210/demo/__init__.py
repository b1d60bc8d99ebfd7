"""`make demo` and `make pretrained`: the whole chain on ORL, as steps that resume, with a report.

``run`` (the demo's runner: steps recorded and skipped when made from the same inputs), ``steps``
(the step functions it and ``pretrained`` share), ``report`` (``report.md``), ``pretrained``
(the open pretrained MobileFaceNet made into a K210 model), ``pretrained_report`` (its report).
Nothing is imported here, so that ``mfk210 --help`` does not load TensorFlow.
"""
