"""Evaluation: InsightFace's 10-fold verification for Keras, TFLite and kmodel embedding models."""
