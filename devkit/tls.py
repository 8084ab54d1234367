"""A throw-away certificate authority and a broker certificate for the local SASL_SSL broker.

Made with the ``openssl`` command (installed with the system; ``deploy/local/setup.sh`` checks it),
valid for 30 days, for ``localhost`` and ``127.0.0.1`` only::

    material = make_broker_tls(folder)   # ca.crt, ca.key, broker.pem (key + chain), broker.crt
    material.ca_file                     # what clients trust (TRAFFIC_KAFKA_SSL_CAFILE)
    material.keystore                    # PEM keystore for Kafka (ssl.keystore.type=PEM)

Keys are unencrypted and the files readable by their owner only: this is test material on
loopback, never a production CA.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from traffic.errors import BrokerError

DAYS = 30


@dataclass(frozen=True)
class BrokerTls:
    """Paths of the generated material."""

    ca_file: Path
    ca_key: Path
    keystore: Path
    certificate: Path


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise BrokerError("openssl is not installed; the SASL_SSL broker needs it to make its CA (apt-get install openssl)")
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise BrokerError(f"openssl {args[0]} failed: {(proc.stderr or proc.stdout).strip()[-800:]}")


def make_broker_tls(folder: Path, hosts: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",)) -> BrokerTls:
    """Create (or reuse) a CA and a CA-signed broker certificate with the given names in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    out = BrokerTls(folder / "ca.crt", folder / "ca.key", folder / "broker.pem", folder / "broker.crt")
    if all(p.exists() for p in (out.ca_file, out.ca_key, out.keystore, out.certificate)):
        return out
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", str(DAYS),
        "-subj", "/CN=traffic-pipeline local test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder,
    )  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr", "-subj", "/CN=localhost", cwd=folder)
    names = ",".join([f"DNS:{h}" for h in hosts] + [f"IP:{ip}" for ip in ips])
    (folder / "broker.ext").write_text(
        f"subjectAltName={names}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", "broker.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "broker.crt",
        "-days", str(DAYS), "-sha256", "-extfile", "broker.ext", cwd=folder,
    )  # fmt: skip
    # Kafka's PEM keystore: the PKCS#8 private key, then the certificate chain.
    out.keystore.write_text((folder / "broker.key").read_text() + out.certificate.read_text() + out.ca_file.read_text())
    for path in folder.iterdir():
        os.chmod(path, 0o600 if path.suffix in (".key", ".pem") else 0o644)
    return out
