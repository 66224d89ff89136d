"""Experiment drivers behind the chapters: train a model with a given loss, evaluate it, tabulate.

One module per chapter (``openkbp``: the OpenKBP baseline; ``sharp``; ``dvh_loss``;
``dvh_conditioned``; ``region`` and ``region_openkbp``; ``doselo``); the notebooks call these so that
they stay short and the same code path runs in the quick and full profiles.
They sit on top of the library: nothing in :mod:`rtlearn` imports them except
the benchmarks, the study runner and the book tooling.
"""
