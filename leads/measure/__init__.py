"""Tools for measuring ingestion against real processes: a Graph API stand-in and Meta-shaped bodies.

Used by `manage.py measure_ingestion` and by the worker tests; nothing in the application imports it.
"""
