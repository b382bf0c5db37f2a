"""The admin web panel (docs/protocol.md section 6): see :mod:`pns4ones.admin.app`."""
