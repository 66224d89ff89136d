"""Experiment drivers behind the chapters: train a model with a given loss, evaluate it, tabulate.

One module per chapter; the notebooks call these so that they stay short and the
same code path runs in the quick and full profiles.
"""
