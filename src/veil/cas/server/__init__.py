"""The network CAS: HTTPS API over ``Cas`` (docs/cas-api.md)."""

from veil.cas.server.app import CasApp, CasSelf, openapi_document
from veil.cas.server.serve import serve

__all__ = ["CasApp", "CasSelf", "openapi_document", "serve"]
