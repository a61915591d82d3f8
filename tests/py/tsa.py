"""A local RFC 3161 time-stamp authority for the tests: `openssl ts -reply` behind HTTP.

Usage: tsa.py DIR

Creates a self-signed TSA certificate and key in DIR, listens on 127.0.0.1 (a free port),
prints one JSON line {"url": ..., "certificate": ...} and answers POSTed time-stamp queries
until killed. Each query is logged to DIR/queries.log.
"""

import http.server
import json
import os
import subprocess
import sys
import tempfile


def setup(d: str) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-keyout", f"{d}/tsa.key", "-out", f"{d}/tsa.crt", "-days", "30",
         "-subj", "/CN=wormvault test TSA",
         "-addext", "extendedKeyUsage=critical,timeStamping",
         "-addext", "keyUsage=critical,digitalSignature"],
        check=True, capture_output=True)
    with open(f"{d}/serial", "w") as f:
        f.write("01\n")
    with open(f"{d}/tsa.cnf", "w") as f:
        f.write(f"""[ tsa ]
default_tsa = tsa_config1
[ tsa_config1 ]
dir = {d}
serial = {d}/serial
crypto_device = builtin
signer_cert = {d}/tsa.crt
signer_key = {d}/tsa.key
signer_digest = sha256
default_policy = 1.2.3.4.1
other_policies = 1.2.3.4.2
digests = sha256
accuracy = secs:1
ordering = no
tsa_name = no
ess_cert_id_chain = no
ess_cert_id_alg = sha256
""")


def main():
    d = os.path.abspath(sys.argv[1])
    os.makedirs(d, exist_ok=True)
    setup(d)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with tempfile.TemporaryDirectory() as t:
                with open(f"{t}/q.tsq", "wb") as f:
                    f.write(body)
                r = subprocess.run(
                    ["openssl", "ts", "-reply", "-config", f"{d}/tsa.cnf",
                     "-queryfile", f"{t}/q.tsq", "-out", f"{t}/r.tsr"],
                    capture_output=True)
                if r.returncode != 0:
                    self.send_response(500)
                    self.end_headers()
                    return
                reply = open(f"{t}/r.tsr", "rb").read()
            with open(f"{d}/queries.log", "a") as log:
                log.write(f"{len(body)} bytes\n")
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    print(json.dumps({"url": f"http://127.0.0.1:{server.server_port}/",
                      "certificate": f"{d}/tsa.crt"}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
