"""`manage.py bench`: latency of the read API against a running server, next to the raw SQL it runs;
user sessions, mixed read throughput, the ops write, and Meta ingestion (ack and end to end).

- `fixture`   picks the tenants to measure (the whale, a ~10k-lead tenant, session users' tenants) and
              issues throw-away tokens;
- `scenarios` the read requests, each with the guide's and our targets (TARGETS.md "Latency");
- `http`      the closed-loop HTTP load (N requests in flight, keep-alive connections) and sessions;
- `sql`       the SQL a request runs, captured in-process, then timed alone on a raw connection;
- `sessions`  concurrent portal user sessions and the mixed read throughput;
- `writes`    the ops transition, made there and back;
- `ingestion` the webhook ack and end to end, with the Graph stub and worker processes it starts;
- `report`    percentiles, framework overhead in liveness p50s, the table, the JSON and the report folder
              (markdown, latency chart).
"""
