"""`manage.py bench`: latency of the read API against a running server, next to the raw SQL it runs.

- `fixture`   picks the tenants to measure (the whale, a ~10k-lead tenant) and issues throw-away tokens;
- `scenarios` the requests, each with the guide's and our targets (TARGETS.md "Latency");
- `http`      the closed-loop HTTP load (N requests in flight, keep-alive connections);
- `sql`       the SQL a request runs, captured in-process, then timed alone on a raw connection;
- `report`    percentiles, the table and the JSON.
"""
