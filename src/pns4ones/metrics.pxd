# The compiled build of metrics.py (setup.py; Cython reads this file beside the .py): the
# metrics, their latency histogram and an application's totals as extension types, their
# attributes C fields.  The same names as their __slots__ (tests/test_compiled.py compares
# them); public: readable and writable from Python.
# cpdef: a C method of the send path, its arguments (and @cython.locals) typed with the
# values' classes, cimported as C* (docs/development.md, "The compiled send path").

cimport cython


cdef class NullMetrics:
    cdef public object deliveries
    cdef public object sends

    cpdef sent(self, app_id, kind, seconds)
    cpdef routed(self, app_id, written, frame_bytes)

cdef class _Histogram:
    cdef public object bounds
    cdef public object counts
    cdef public object documentation
    cdef public object name
    cdef public object sum

cdef class _AppTotals:
    cdef public object deliveries
    cdef public object frame_bytes
    cdef public dict sent

cdef class Metrics(NullMetrics):
    cdef public object _accepted
    cdef public object _addin_refused
    cdef public dict _apps
    cdef public object _bytes
    cdef public object _cuts
    cdef public object _deliveries
    cdef public object _history
    cdef public object _http
    cdef public object _http_counts
    cdef public object _http_labels
    cdef public _Histogram _latency
    cdef public tuple _latency_bounds
    cdef public list _latency_counts
    cdef public object _messages
    cdef public object _panel_messages
    cdef public object _registrations
    cdef public object _rejected
    cdef public object _token_children
    cdef public object _tokens
    cdef public object clock
    cdef public object registry
    cdef public object started

    @cython.locals(totals=_AppTotals, counts=dict)
    cpdef sent(self, app_id, kind, seconds)
    @cython.locals(totals=_AppTotals)
    cpdef routed(self, app_id, written, frame_bytes)
