"""schemathesis against the served OpenAPI document: no 5xx, every answer as documented, and
no schema-valid request refused as malformed (the schema is as strict as the server).

Runs as the CAS's administrator (client certificate), so every route is exercised beyond 401.
"""

from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.cas_server import CasServer, start_cas
from veil.cas.server import openapi_document
from veil.client.config import ClientConfig
from veil.client.http import enrol_owner

#: what a schema-valid request may be answered: content the schema cannot describe (a
#: session's YAML, a CSR, evidence) is refused with 403, 404, 409 or 422, never 400
ACCEPTED = ["2xx", "401", "403", "404", "409", "422"]
config = SchemathesisConfig.from_dict(
    {"checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED}}}
)
schema = schemathesis.openapi.from_dict(openapi_document(), config=config)


@pytest.fixture(scope="module")
def admin_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CasServer, requests.Session]]:
    root = tmp_path_factory.mktemp("openapi")
    server = start_cas(root)
    admin = server.admin
    config = ClientConfig.load(admin.home / "veil")
    (root / "owner.crt").write_text(enrol_owner(server.url, config))
    (root / "ca.crt").write_text(config.pin(server.url).ca_certificate)
    session = requests.Session()
    session.verify = str(root / "ca.crt")
    session.cert = (str(root / "owner.crt"), str(config.owner_key_file))
    yield server, session
    session.close()
    server.stop()


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_answers_as_documented(
    case: schemathesis.Case, admin_session: tuple[CasServer, requests.Session]
) -> None:
    server, session = admin_session
    response = case.call(
        base_url=server.url, session=session, verify=session.verify, cert=session.cert, timeout=30
    )
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            positive_data_acceptance,
        ],
    )


def test_every_route_was_fuzzed() -> None:
    operations = {(o.ok().method.upper(), o.ok().path) for o in schema.get_all_operations()}
    methods = {"get", "put", "post", "delete", "patch"}
    documented = sum(len(methods & set(item)) for item in openapi_document()["paths"].values())
    assert len(operations) == documented
