"""The pieces of ``mfk210 train`` (:mod:`mobilefacenet_k210.train` runs them), one idea per module.

``run_folder`` (the run's files: fingerprint, state, resume clean-up), ``context`` (what the phases
of a run share), ``distribute`` (tf.distribute strategy and dtype policy), ``schedule`` (learning
rate and optimizer), ``callbacks`` (what runs during ``model.fit``), ``plot`` (``loss.png``),
``imprint`` (class centres from mean embeddings).
"""
