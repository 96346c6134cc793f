"""s3 controller service: schedules and persists jobs (see ``server.py``; logic in ``s3core.jobs``)."""
