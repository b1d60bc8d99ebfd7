"""The embedding network (MobileFaceNet) and its saved form; classification heads live in heads.py."""
