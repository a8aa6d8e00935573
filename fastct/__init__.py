"""fastct: a Cython-accelerated connection-tracking (conntrack) engine."""
from fastct._version import __version__
from fastct.batch import Batch
from fastct.capture.reader import CaptureError, CaptureReader
from fastct.tracker import (CT_STATE_BITS, ENTRY_DTYPE, STATUS_BITS, TCP_STATES, Result, Tracker,
                            ct_state_names, status_names)

__all__ = ["__version__", "Batch", "CaptureError", "CaptureReader", "CT_STATE_BITS", "ENTRY_DTYPE",
           "STATUS_BITS", "TCP_STATES", "Result", "Tracker", "ct_state_names", "status_names"]
