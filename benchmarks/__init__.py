"""Benchmarks: run with ``make bench`` or ``python -m benchmarks [NAME ...]``.

Not tests: each compares our code with upstream Glance / glance_store on the
same machine in the same run and prints ratios; the results are copied into
doc/source/benchmarks.rst.
"""
