"""The WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`.

gunicorn imports this in each worker, after the fork: the app, its runtime and
the worker's background work (messenger/bootstrap.py) are per process.
"""

from gevent import monkey

monkey.patch_all()

from messenger import bootstrap, create_app  # noqa: E402

app = create_app()
background = bootstrap.start(app.extensions["messenger"])
