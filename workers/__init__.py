"""Celery workers: the tasks, the job runner, the reaper, and the queue port the web side uses.

Importing the package does nothing: ``celery -A workers`` finds its app in
``workers.celery``, ``medsam worker`` builds one with ``workers.app.make_app``,
and the web process sends through ``workers.queue.JobQueue``.
"""
