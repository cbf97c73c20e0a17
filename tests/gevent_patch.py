"""Loaded first (`-p tests.gevent_patch` in setup.cfg), before any pytest plugin
imports ssl or socket: the whole test run is cooperative, like a gevent worker."""

from gevent import monkey

monkey.patch_all()
