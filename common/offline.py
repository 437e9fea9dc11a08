"""A guard that makes any network connection fail (loopback and Unix sockets stay allowed).

Tests install it, and so does `import common` when WORKSHOP_BLOCK_NETWORK=1 (how `make test`
runs the notebooks), so nothing in the course can quietly depend on a download.
"""
import os
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


def hub_host_answers(timeout: float = 2.0) -> bool:
    """Whether the Hub's host accepts a TCP connection within `timeout` seconds (nothing is requested).
    Behind an HTTPS proxy the host is not reached directly, so the hub client is left to try."""
    from urllib.parse import urlparse

    from huggingface_hub import constants
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout):
            return True
    except Exception:   # no route, no name, a timeout, or the course's own network guard
        return False
