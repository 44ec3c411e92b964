"""voiceload: SIP/voice load generator for voice-fronted bots."""

import os as _os

# Every role runs as its own process on a shared box: numpy's BLAS must not start a thread pool
# per process that spins for cores the call media needs (it stalled the bridge clock for seconds).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")

__version__ = "0.1.0"
