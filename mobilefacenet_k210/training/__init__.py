"""``mfk210 train``: ``run`` (:func:`~mobilefacenet_k210.training.run.train`, the phases of a training run)
and its pieces, one idea per module.

``run_folder`` (the run's files: fingerprint, state, resume clean-up), ``context`` (what the phases
of a run share), ``distribute`` (tf.distribute strategy and dtype policy), ``schedule`` (learning
rate and optimizer), ``callbacks`` (what runs during ``model.fit``), ``plot`` (``loss.png``),
``imprint`` (class centres from mean embeddings).
"""
