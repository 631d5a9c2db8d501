"""The entry for ``celery -A workers ...`` (worker, inspect, flower): Celery's app finder looks here.

Only Celery's command line imports this module, and it builds the app from the
environment's settings as it does; everything else calls ``make_app`` itself.
"""

from workers.app import make_app

app = make_app()
