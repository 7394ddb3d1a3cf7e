"""What a caller can make the CAS do before it is known: bounded, refused with a 4xx within a
second, while /healthz keeps answering (docs/cas-api.md, "Limits")."""

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.cas_server import CasServer, pinned_owner
from tests.conftest import session_dict
from tests.net import free_port
from tests.security.attacker import Stranger, closed_within

TIMEOUTS = {"VEIL_CAS_HEADER_TIMEOUT": "2", "VEIL_CAS_HANDSHAKE_TIMEOUT": "2", "VEIL_CAS_BODY_TIMEOUT": "2"}


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CasServer]:
    root = tmp_path_factory.mktemp("bounds")
    server = CasServer(root / "cas", free_port(), root / "cas.log", env=TIMEOUTS).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def owner(cas: CasServer, tmp_path_factory: pytest.TempPathFactory) -> Stranger:
    """An admitted owner speaking raw HTTPS (with the certificate the CAS issued to it)."""
    root = tmp_path_factory.mktemp("owner")
    ca = pinned_owner(root, cas, "pin", admit=False).pin(cas.url)["ca_certificate"]
    caller = Stranger(cas, ca, root / "caller")
    result = cas.admin.veil("cas", "owner", "add", caller.id)
    assert result.returncode == 0, result.stderr
    assert caller.enrol()[0] == 201
    return caller


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def while_healthz_answers(owner: Stranger, call: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``call`` while another client polls /healthz; the call's result, and the slowest
    /healthz answer seen meanwhile."""
    slowest = 0.0
    done = threading.Event()

    def poll() -> None:
        nonlocal slowest
        while not done.is_set():
            (status, _), took = timed(lambda: owner.request("GET", "/healthz", timeout=10))
            assert status == 200
            slowest = max(slowest, took)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        result = call()
    finally:
        done.set()
        poller.join()
    return result, slowest


BOMB = 'a: &a ["x","x","x","x","x","x","x","x","x","x"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(7)
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BOMB, "expands to more than"),
        ("name: x\nversion: '1'\nservices: " + "[" * 5000 + "]" * 5000, "nests deeper than"),
        ("a: &x [*x]\n", "refers to a node that contains it"),
    ],
    ids=["alias-bomb", "nested-5000", "recursive-alias"],
)
def test_hostile_yaml_is_refused_within_a_second(owner: Stranger, text: str, message: str) -> None:
    assert len(BOMB) < 400  # 10^8 leaves once expanded
    ((status, answer), took), slowest = while_healthz_answers(
        owner, lambda: timed(lambda: owner.request("POST", "/v1/sessions", {"text": text}))
    )
    assert status == 422, answer
    assert message in answer["problems"][0]
    assert took < 1.0 and slowest < 1.0


def test_a_large_session_is_parsed_off_the_event_loop(owner: Stranger) -> None:
    document = session_dict(name="bounds/large")
    document["services"][0]["environment"] = {f"V{i}": "x" * 8 for i in range(6000)}
    text = yaml.safe_dump(document, sort_keys=False)
    ((status, answer), took), slowest = while_healthz_answers(
        owner, lambda: timed(lambda: owner.request("POST", "/v1/sessions", {"text": text}))
    )
    assert status == 201, answer
    assert slowest < max(0.25, took / 2), (took, slowest)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"name": "bounds/lookalike\n"}, "a session name"),
        ({"secrets": [{"name": "s\n", "kind": "ascii", "size": 8}]}, "secrets[0].name"),
        ({"services": [{**session_dict()["services"][0], "name": "app\n"}]}, "services[0].name"),
    ],
    ids=["session", "secret", "service"],
)
def test_names_with_a_trailing_newline_are_refused(
    owner: Stranger, change: dict[str, object], where: str
) -> None:
    text = yaml.safe_dump({**session_dict(name="bounds/names"), **change})
    (status, answer), took = timed(lambda: owner.request("POST", "/v1/sessions", {"text": text}))
    assert status == 422 and took < 1.0
    assert any(where in problem for problem in answer["problems"]), answer


def test_deeply_nested_json_gets_400_without_authentication(owner: Stranger, cas: CasServer) -> None:
    anonymous = Stranger(cas, owner.ca_pem, owner.home.parent / "anonymous")
    for path in ("/v1/attest", "/v1/volume-tags", "/v1/owners"):
        (status, answer), took = timed(lambda path=path: anonymous.request("POST", path, raw=b"[" * 200_000))
        assert status == 400 and "nests deeper than 32" in answer["error"], (path, answer)
        assert took < 1.0
    deep = b'{"nonce": ' + b"[" * 40 + b"]" * 40 + b"}"
    assert anonymous.request("POST", "/v1/cas/evidence", raw=deep)[0] == 400


def test_a_body_over_the_size_limit_gets_413(owner: Stranger) -> None:
    status, _ = owner.request("POST", "/v1/sessions", raw=b'{"text": "' + b"x" * (5 << 20) + b'"}')
    assert status == 413


def test_slow_connections_are_closed(owner: Stranger, cas: CasServer) -> None:
    # no TLS handshake at all
    with socket.create_connection(("127.0.0.1", cas.port), timeout=10) as silent:
        assert closed_within(silent, 6)
    # a handshake, then half a request head, then nothing
    with owner.raw_tls() as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        started = time.monotonic()
        assert closed_within(slow, 6)
        assert time.monotonic() - started > 1.0  # the header timeout, not an immediate refusal
    # a head, then a body that never arrives
    with owner.raw_tls() as slow:
        slow.sendall(b"POST /v1/attest HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
        slow.settimeout(10)
        started = time.monotonic()
        answer = slow.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 2 s" in answer
        assert 1.0 < time.monotonic() - started < 6


def test_one_address_cannot_hold_every_connection(owner: Stranger, cas: CasServer) -> None:
    held = []
    try:
        for _ in range(64):  # MAX_PENDING_PER_PEER connections that never send a request
            held.append(owner.raw_tls(source="127.0.0.2"))
        extra = owner.raw_tls(source="127.0.0.2")
        held.append(extra)
        assert closed_within(extra, 1.5), "the connection over the cap is closed at once"
        (status, _), took = timed(lambda: owner.request("GET", "/healthz", timeout=5))
        assert status == 200 and took < 1.0, "other addresses are still served"
    finally:
        for connection in held:
            connection.close()
    assert "have not sent a request yet" in cas.log.read_text()
