"""Tools for measuring ingestion against real processes: a Graph API stand-in and Meta-shaped bodies.

Used by `manage.py measure_ingestion`, the worker tests and `make run` (a stand-in for Graph, so a
laptop can ingest a test lead offline); nothing in the application imports it.
"""
