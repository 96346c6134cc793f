"""Job kinds, states, the state machine and the job records: defined in :mod:`s3core.jobmodel` (a
foundation module, so the wire layer ``s3core.rpc`` can convert them); this name stays for callers."""

from s3core.jobmodel import (  # noqa: F401
    BACKENDS,
    CANCELLED,
    FAILED,
    FINAL_STATES,
    KINDS,
    MAX_RETRY_DELAY_S,
    PENDING,
    RUNNING,
    STATES,
    SUCCEEDED,
    TRANSITIONS,
    JobEvent,
    JobRecord,
    check_kind,
    check_state,
    check_transition,
    is_final,
)
