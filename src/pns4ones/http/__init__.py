"""
The send API's HTTP front-ends, together:

- :mod:`.calls`: the plain values every route is written against, a
  :class:`~.calls.Call` in and an :class:`~.calls.Answer` out;
- :mod:`.handlers`: one handler per route (``Call -> Answer | Deferred[Answer]``)
  and the one map from errors to answers;
- :mod:`.connection`: the send API listener's HTTP/1.1 connections, an explicit
  state machine over llhttp (httptools), bounded at every byte; it answers the
  hot routes itself and hands every other request, complete, to twisted.web;
- :mod:`.site`: the twisted.web side shared by every listener (a bounded,
  quiet ``Site``, its channel, JSON error bodies);
- :mod:`.resources`: the Klein routes and twisted.web resources, each adapting
  an Answer in a few lines.
"""
