"""``make bench``: the bus measured against its physical ceiling, as ratios from one run.

Not part of the installed package: run it from the repository with ``python -m bench.run``.
"""
