"""Command-line benchmarks (time and memory), one module per subject:

* ``python -m rtlearn.bench.losses`` -- the losses at full 3D scale (:mod:`rtlearn.bench.losses`);
* ``python -m rtlearn.bench.phantom`` -- the phantom clinic's anatomy and planning (:mod:`rtlearn.bench.phantom`);
* ``python -m rtlearn.bench.gpu`` -- every chapter's full-profile model and loss for a few steps on a GPU
  (bf16 autocast, ``channels_last``): throughput, peak memory, estimated full-run time (:mod:`rtlearn.bench.gpu`).

Nothing in the library imports them.
"""
