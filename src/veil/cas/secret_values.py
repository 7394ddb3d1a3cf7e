"""Secret values: generated once by the CAS, or decoded from an explicit policy value.

A value is kept across session updates as long as its definition (fingerprint) is unchanged.
"""

import base64
import binascii
import secrets

from veil.cas.errors import CasError
from veil.crypto import canonical_json, sha256_hex
from veil.policy import SecretDefinition


def definition_fingerprint(definition: SecretDefinition) -> str:
    return sha256_hex(canonical_json(definition.model_dump(mode="json")))


def make_secret_value(definition: SecretDefinition) -> bytes:
    if definition.value is not None:
        return _explicit_value(definition)
    size = definition.generated_size
    if definition.kind == "ascii":
        alphabet = definition.effective_charset
        return "".join(secrets.choice(alphabet) for _ in range(size)).encode("ascii")
    return secrets.token_bytes(size)


def _explicit_value(definition: SecretDefinition) -> bytes:
    assert definition.value is not None
    try:
        if definition.encoding == "hex":
            return bytes.fromhex(definition.value)
        if definition.encoding == "base64":
            return base64.b64decode(definition.value, validate=True)
    except (ValueError, binascii.Error):
        raise CasError(f"secret '{definition.name}': value is not valid {definition.encoding}") from None
    return definition.value.encode("utf-8")
