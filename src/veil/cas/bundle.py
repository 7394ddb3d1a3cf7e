"""Building a service's configuration bundle: the policy with its secrets substituted."""

from veil.policy import SecretRenderer, Service, substitute, substitute_text
from veil.policy.model import SHIELD_SECRET_FORMATS
from veil.protocol import BundleFile, ConfigurationBundle


def build_bundle(
    session_name: str, session_hash: str, service: Service, secret: SecretRenderer
) -> ConfigurationBundle:
    where = f"service '{service.name}'"
    argv = [substitute_text(a, secret, f"{where} command[{i}]") for i, a in enumerate(service.command)]
    environment = {
        k: substitute_text(v, secret, f"{where} environment {k}") for k, v in service.environment.items()
    }
    files = [BundleFile(f.path, f.mode_bits, substitute(f.content, secret)) for f in service.files]
    return ConfigurationBundle(
        session=session_name,
        service=service.name,
        session_hash=session_hash,
        argv=argv,
        environment=environment,
        pwd=service.pwd,
        files=files,
        allow_extra_args=service.allow_extra_args,
        tmpfs=list(service.tmpfs),
        network=service.network.model_dump(mode="json"),
        network_secrets={
            f"{name}:{fmt}": secret(name, fmt).decode("ascii")
            for _, name, role in service.network.secret_uses()
            for fmt in SHIELD_SECRET_FORMATS[role]
        },
    )
