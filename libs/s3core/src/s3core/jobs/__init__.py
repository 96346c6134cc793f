"""Jobs: index, precompute, eval, train and infer runs, persisted in Redis and run by workers.

* :mod:`~s3core.jobs.model` -- kinds, states, the state machine, the job and event records;
* :mod:`~s3core.jobs.spec` -- the job spec (the CLI's YAML config plus a typed ``job:`` mapping per kind);
* :mod:`~s3core.jobs.store` -- the Redis job store (atomic, fenced transitions; an event stream per job);
* :mod:`~s3core.jobs.controller` -- submit / cancel / register and the reconcile loop (no gRPC);
* :mod:`~s3core.jobs.backends` -- where workers run: ``local`` processes or ``kubernetes`` Jobs;
* :mod:`~s3core.jobs.worker` -- ``python -m s3core.jobs.worker``: runs one attempt of one job;
* :mod:`~s3core.jobs.bodies` -- what each kind does; :mod:`~s3core.jobs.record` -- the run record.

The controller service (``services/controller``) is a thin gRPC shell over these modules.
"""
