"""The chaos suite (`make chaos`, TARGETS.md "Reliability and security" 1, 2, 3, 5, 11 and 12).

`python -m converzia.chaos` starts a private PostgreSQL cluster and a private Valkey (never the
machine's shared servers) under `.data/chaos-<id>/`, then runs `manage.py chaos` against them, which
starts gunicorn under production settings, two workers, the Graph stand-in and a tenant's receiver,
injects each fault and prints one line per figure. Everything it started is stopped at the end.
"""
