"""The WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`."""

from gevent import monkey

monkey.patch_all()

from messenger import create_app  # noqa: E402

app = create_app()
