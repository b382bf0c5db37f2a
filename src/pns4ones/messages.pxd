# The compiled build of messages.py (setup.py; Cython reads this file beside the .py): the
# values of a send as extension types, their attributes C fields; the @dataclass on them is
# Cython's, which makes the same methods.  The same names as their __slots__
# (tests/test_compiled.py compares them), in the order of their fields (Cython's dataclass takes
# that order from here); public: readable and writable from Python.
# cpdef: a C method of the send path, its arguments (and @cython.locals) typed with the
# values' classes, cimported as C* (docs/development.md, "The compiled send path").

cdef class Message:
    cdef public object topic
    cdef public object notification
    cdef public object data

cdef class Recipient:
    cdef public object type
    cdef public object ib_id
    cdef public object user_id
    cdef public object group

cdef class SendRequest:
    cdef public object recipient
    cdef public object message
    cdef public object ttl


cpdef render_addin_json(Message message)
