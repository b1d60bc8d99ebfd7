"""mobilefacenet_k210: from folders of raw photos to a MobileFaceNet kmodel on a Kendryte K210.

Importing the package does no work: no TensorFlow import, no environment changes, no downloads.
"""
__version__ = "0.1.0"
