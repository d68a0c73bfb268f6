"""wss:// with a self-signed certificate that this example makes itself.

    python examples/tls.py

Certificates are checked by default: trusting a self-signed certificate
means putting it in the client's SSLContext (never turning checks off).
Needs the `openssl` command to make the certificate.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading

import blockws


def echo(ws: blockws.WebSocket) -> None:
    for message in ws:
        ws.sendall(message)


def main() -> None:
    if shutil.which("openssl") is None:
        sys.exit("this example needs the openssl command to make a certificate")
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost", "-keyout", key, "-out", cert],
            check=True, capture_output=True,
        )  # fmt: skip
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)
        client_ctx = ssl.create_default_context(cafile=cert)  # trust exactly this certificate
        with blockws.serve(echo, "127.0.0.1", 0, ssl_context=server_ctx) as server:
            threading.Thread(target=server.serve_forever, daemon=True).start()
            url = f"wss://localhost:{server.port}/"
            with blockws.connect(url, ssl_context=client_ctx, timeout=5) as ws:
                ws.sendall("encrypted hello")
                print(f"over TLS: {ws.recv()!r}")
            try:
                blockws.connect(url)  # the system's CAs don't know this certificate
            except ssl.SSLCertVerificationError as exc:
                print(f"without trusting it: {exc.reason}")


if __name__ == "__main__":
    main()
