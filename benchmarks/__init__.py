"""Benchmarks of training-manager-lab, each measured side by side with a baseline in one run.

Run every benchmark with ``python -m benchmarks`` (``--smoke`` for tiny sizes, ``--json PATH``
to keep the figures); see ``docs/benchmarks.md``.
"""
