# The compiled build of connection.py (setup.py; Cython reads this file beside the .py):
# FrontConnection as an extension type, its attributes C fields.  The same names as its
# __slots__ (tests/test_compiled.py compares them); public: readable and writable from Python.
# It calls send_now as a C function (docs/development.md, "The compiled send path").

from pns4ones.txinternals cimport send_now


cdef class FrontConnection:
    cdef public object _active
    cdef public object _advancing
    cdef public object _begun
    cdef public object _body
    cdef public object _body_total
    cdef public object _chunked
    cdef public object _direct
    cdef public object _discard
    cdef public object _feeding
    cdef public object _fields
    cdef public object _framing
    cdef public object _head_bytes
    cdef public object _head_done
    cdef public object _held
    cdef public object _held_size
    cdef public object _inner
    cdef public object _line_bytes
    cdef public object _linger
    cdef public object _lose
    cdef public object _method
    cdef public object _out
    cdef public object _parser
    cdef public object _paused
    cdef public object _peer
    cdef public object _pending
    cdef public object _producing
    cdef public object _read
    cdef public object _route
    cdef public object _seconds
    cdef public object _secure
    cdef public object _size
    cdef public object _swept
    cdef public object _target
    cdef public object _transport
    cdef public object _trusted
    cdef public object _upgrade
    cdef public object _version
    cdef public object connected
    cdef public object factory
    cdef public object handlers
    cdef public object idle_since
    cdef public object max_body
    cdef public object persistent
    cdef public object routes
    cdef public object site
    cdef public object started
    cdef public object state
    cdef public object transport
    cdef object __weakref__
