"""`veil las ...`: the node agent's operator commands."""

from pathlib import Path

import click

from veil.cli.options import HOST_PORT
from veil.cli.output import NETWORK_SIM_BANNER, emit_json, sim_banner
from veil.cli.run import default_home, home_option
from veil.crypto import PlatformSigningKey
from veil.las.service import serve_las
from veil.tee.intel import Collateral
from veil.tee.intel.collateral_store import describe, import_collateral

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def default_cache() -> Path:
    return default_home() / "las" / "collateral"


@click.group()
def las() -> None:
    """The local attestation service (node agent)."""


@las.command("serve")
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Unix socket to serve on [default: $VEIL_HOME/las/las.sock].",
)
@click.option(
    "--listen", type=HOST_PORT, default=None, help="Also serve plain HTTP on HOST:PORT (loopback only!)."
)
@home_option
def serve(socket_path: Path | None, listen: tuple[str, int] | None, home: Path | None) -> None:
    """Serve the node's sim platform key: sign sim evidence for local runtimes.

    The key is created on first start under $VEIL_HOME/las/platform.key; register it with a
    CAS with `veil cas platform add --las ADDRESS`. Runtimes find the LAS by VEIL_LAS_ADDR.
    """
    root = home or default_home()
    key = PlatformSigningKey.load_or_create(root / "las" / "platform.key")
    sim_banner(NETWORK_SIM_BANNER)

    def ready(where: str) -> None:
        click.echo(f"veil LAS serving platform {key.key_id[:16]}… on {where}", err=True)

    serve_las(key, socket_path or root / "las" / "las.sock", listen, ready)


@las.group()
def collateral() -> None:
    """Intel collateral for offline verification."""


@collateral.command("import")
@click.argument("source", required=False, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--tcb-info", type=_FILE, help="TCB info: PCS response or bare JSON (then give --tcb-info-signature)."
)
@click.option("--tcb-info-signature", type=_FILE, help="Signature of a bare TCB info (64 bytes or hex).")
@click.option("--tcb-info-chain", type=_FILE, help="TCB-Info-Issuer-Chain (PEM).")
@click.option("--qe-identity", type=_FILE, help="QE identity: PCS response or bare JSON.")
@click.option("--qe-identity-signature", type=_FILE)
@click.option("--qe-identity-chain", type=_FILE, help="SGX-Enclave-Identity-Issuer-Chain (PEM).")
@click.option("--pck-crl", type=_FILE, help="PCK CRL (DER, PEM or hex).")
@click.option("--pck-crl-chain", type=_FILE, help="SGX-PCK-CRL-Issuer-Chain (PEM).")
@click.option("--root-ca-crl", type=_FILE, help="Intel SGX Root CA CRL (DER, PEM or hex).")
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Cache directory [default: $VEIL_HOME/las/collateral].",
)
@click.option("--json", "as_json", is_flag=True)
def import_(source: Path | None, cache: Path | None, as_json: bool, **files: Path | None) -> None:
    """Verify collateral and store it in the cache, one directory per TEE and FMSPC.

    SOURCE is a dcap-qvl JSON bundle or a directory in the cache layout; or give the Intel
    PCS responses and headers one by one with the options.
    """
    if source is not None:
        loaded = Collateral.load(source)
    else:
        names = {
            "tcb_info": "tcb_info",
            "tcb_info_signature": "tcb_info_signature",
            "tcb_info_issuer_chain": "tcb_info_chain",
            "qe_identity": "qe_identity",
            "qe_identity_signature": "qe_identity_signature",
            "qe_identity_issuer_chain": "qe_identity_chain",
            "pck_crl": "pck_crl",
            "pck_crl_issuer_chain": "pck_crl_chain",
            "root_ca_crl": "root_ca_crl",
        }
        parts = {key: files[opt].read_bytes() for key, opt in names.items() if files.get(opt)}  # type: ignore[union-attr]
        for key in ("tcb_info_signature", "qe_identity_signature"):
            parts.setdefault(key, b"")
        if "tcb_info" not in parts:
            raise click.UsageError("give SOURCE, or --tcb-info, --qe-identity, the CRLs and chains")
        loaded = Collateral.from_parts(parts)
    target = import_collateral(loaded, cache or default_cache())
    summary = describe(loaded) | {"stored": str(target)}
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"stored {summary['tee']} collateral for FMSPC {summary['fmspc']} in {target}")
        click.echo(f"  TCB info valid {summary['tcb_info_valid'][0]} .. {summary['tcb_info_valid'][1]}")  # type: ignore[index]
