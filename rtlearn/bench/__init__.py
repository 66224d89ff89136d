"""Command-line benchmarks (time and memory), one module per subject:

* ``python -m rtlearn.bench.losses`` -- the losses at full 3D scale (:mod:`rtlearn.bench.losses`);
* ``python -m rtlearn.bench.phantom`` -- the phantom clinic's anatomy and planning (:mod:`rtlearn.bench.phantom`).

Nothing in the library imports them.
"""
