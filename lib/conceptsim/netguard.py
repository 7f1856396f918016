"""Refuse every socket connection to a non-loopback address (tests run with the network cut).

Installed by the test suite's autouse fixture, and in any process importing :mod:`conceptsim` while
``CONCEPTSIM_FORBID_NETWORK=1`` (so papermill kernels started by the tests are cut off too).
"""

from __future__ import annotations

import ipaddress
import socket

_original_connect = socket.socket.connect
_original_connect_ex = socket.socket.connect_ex
_original_getaddrinfo = socket.getaddrinfo


class NetworkForbidden(ConnectionRefusedError):
    """A connection to a non-loopback address was attempted while the network is cut."""


def _is_loopback(host: object) -> bool:
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _check(address: object) -> None:
    if isinstance(address, (tuple, list)) and address and not _is_loopback(address[0]):
        raise NetworkForbidden(f"network access to {address!r} is forbidden (conceptsim network guard)")


def _connect(self: socket.socket, address):  # type: ignore[no-untyped-def]
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _check(address)
    return _original_connect(self, address)


def _connect_ex(self: socket.socket, address):  # type: ignore[no-untyped-def]
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _check(address)
    return _original_connect_ex(self, address)


def _getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
    if not _is_loopback(host) and not _is_ip(host):
        raise NetworkForbidden(f"name resolution of {host!r} is forbidden (conceptsim network guard)")
    return _original_getaddrinfo(host, *args, **kwargs)


def _is_ip(host: object) -> bool:
    try:
        ipaddress.ip_address(str(host))
        return True
    except ValueError:
        return False


def install() -> None:
    socket.socket.connect = _connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = _getaddrinfo  # type: ignore[assignment]


def uninstall() -> None:
    socket.socket.connect = _original_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _original_connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = _original_getaddrinfo  # type: ignore[assignment]
