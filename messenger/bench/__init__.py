"""The benchmark harness: `python -m messenger.bench [--quick]` (`make bench`).

It starts a stack of its own (embedded PostgreSQL and Redis, gunicorn with the
production gunicorn.conf.py), drives it from a gevent load client in this process,
and reports each figure beside its target (table, JSON, HTML with inline SVG).

Modules: stack (start/stop the processes), client (HTTP/1.1 on gevent sockets),
scenarios (a harness and one module per scenario: what is measured), seed (long
conversations copied in SQL), procs (RSS and CPU, with psutil), stats (percentiles),
profiling (py-spy behind --profile), report (targets, text and JSON, SVG, HTML),
runner (the CLI), client_compare (a one-off measurement of client against
geventhttpclient).
Nothing here is imported by the server.
"""
