"""The lab's migration TLS: a CA and, per host, a certificate naming the
host's migration address (subjectAltName IP:, which QEMU checks; a CN alone
fails) and its host name, usable as server and as client (the source QEMU
presents it to the destination's). Files as QEMU's migrate_tls_x509_cert_dir
wants them: ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem,
client-key.pem. openssl only; the lab is thrown away with its keys."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

DAYS = "30"


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {(proc.stderr or proc.stdout).strip()}")


def make_ca(directory: Path, name: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca-key.pem", "-out", "ca-cert.pem",
             "-days", DAYS, "-subj", f"/CN={name} migration CA", cwd=directory)


def make_host_certificate(ca: Path, out: Path, hostname: str, address: str) -> None:
    """Into `out`: the CA's certificate and the host's key and certificate
    (as server and client)."""
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    (out / "ext.cnf").write_text(f"subjectAltName = IP:{address},DNS:{hostname}\n"
                                 "extendedKeyUsage = serverAuth,clientAuth\n"
                                 "keyUsage = digitalSignature,keyEncipherment\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server-key.pem", "-out", "server.csr",
             "-subj", f"/CN={hostname}", cwd=out)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", str(ca / "ca-cert.pem"), "-CAkey", str(ca / "ca-key.pem"),
             "-CAcreateserial", "-out", "server-cert.pem", "-days", DAYS, "-extfile", "ext.cnf", cwd=out)
    for name in ("server.csr", "ext.cnf"):
        (out / name).unlink()
    shutil.copy(ca / "ca-cert.pem", out / "ca-cert.pem")
    shutil.copy(out / "server-cert.pem", out / "client-cert.pem")
    shutil.copy(out / "server-key.pem", out / "client-key.pem")
    for key in ("server-key.pem", "client-key.pem"):
        os.chmod(out / key, 0o600)
