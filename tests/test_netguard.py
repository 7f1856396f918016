import socket

import pytest

from conceptsim.netguard import NetworkForbidden


def test_outside_connection_is_refused():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(NetworkForbidden):
        s.connect(("93.184.216.34", 80))
    s.close()


def test_name_resolution_is_refused():
    with pytest.raises(NetworkForbidden):
        socket.getaddrinfo("pypi.org", 443)


def test_loopback_is_allowed():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.connect(server.getsockname())
    client.close()
    server.close()
