"""A guard that makes any network connection fail (loopback and Unix sockets stay allowed).

Tests install it, and so does `import common` when WORKSHOP_BLOCK_NETWORK=1 (how `make test`
runs the notebooks), so nothing in the course can quietly depend on a download.
"""
import socket

_original_connect = socket.socket.connect
_original_getaddrinfo = socket.getaddrinfo
_LOCAL = ("localhost", "127.0.0.1", "::1", "0.0.0.0")


class NetworkBlocked(RuntimeError):
    pass


def _is_local(host) -> bool:
    return isinstance(host, str) and (host in _LOCAL or host.startswith("127."))


def _guarded_connect(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
        raise NetworkBlocked(f"network access to {address[0]} is blocked (offline-first course)")
    return _original_connect(sock, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host is not None and not _is_local(host):
        raise NetworkBlocked(f"name lookup of {host} is blocked (offline-first course)")
    return _original_getaddrinfo(host, *args, **kwargs)


def block_network() -> None:
    socket.socket.connect = _guarded_connect
    socket.getaddrinfo = _guarded_getaddrinfo


def allow_network() -> None:
    socket.socket.connect = _original_connect
    socket.getaddrinfo = _original_getaddrinfo
