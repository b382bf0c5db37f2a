"""The twistd plugin: ``twistd -n pns4ones``.  Import-light: the package loads on use."""

from twisted.application.service import ServiceMaker

pns4ones = ServiceMaker(
    "pns4ones",
    "pns4ones.tap",
    "Push notifications for 1C:Enterprise (PNS4OneS-compatible)",
    "pns4ones",
)
