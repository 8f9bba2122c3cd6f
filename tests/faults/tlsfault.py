#!/usr/bin/env python3
"""tlsfault.py - the TLS side of fault case 9 (tests/faults/fault_tls.c).

Two commands, standard library and the openssl tool only:

  tlsfault.py certs --ca CA.pem --ca-key CA.key --out DIR
      Makes, in DIR, the certificates a broker or a BILLmanager must not be
      trusted with, each with its key (FILE.pem, FILE.key):
        other      CN=localhost, signed by a CA of its own (other-ca.pem),
                   which nobody trusts: "unable to get local issuer"
        expired    CN=localhost, signed by the test CA, valid from
                   2020-01-01 to 2021-01-01: "certificate has expired"
        wronghost  signed by the test CA for wrong-host.invalid only:
                   "hostname mismatch" for a client that dialled localhost
        selfsigned CN=127.0.0.1, self-signed (its own CA), for the
                   emulator's https: "self-signed certificate"
      The test CA's files are only read (the serials come from DIR).

  tlsfault.py listen --cert FILE --key FILE --port-file F --events F
      A TLS listener on 127.0.0.1 (a free port, written to the port file
      once it listens) that presents that certificate to whoever connects,
      and appends one JSON line per connection to the events file:
        {"n": 1, "t": 1700000000.5,       when it was accepted (Unix time)
         "first": "16030100...",          the first bytes the client sent (hex)
         "tls": true,                     they start a TLS handshake record
         "plain_amqp": false,             they are the plain AMQP header
         "handshake": "failed",           "ok", "failed", "eof" or "timeout"
         "error": "TLSV1_ALERT_UNKNOWN_CA",  why the handshake failed
         "after": 0,                      raw bytes the client sent after a
                                          failed handshake (before it closed)
         "app": 0, "app_head": ""}        bytes received over TLS after a
                                          handshake that succeeded
      A client that verifies the certificate never completes a handshake,
      so "handshake" is "failed", "after" and "app" are 0; one that fell
      back to plain text would show "plain_amqp", one that skipped
      verification "handshake": "ok" and the AMQP header in "app_head".
      SIGTERM ends it.
"""

import argparse
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

# How long one connection is watched: a client that verifies sends its
# alert within milliseconds; one that skipped verification sends the AMQP
# header at once.
CONN_TIMEOUT_S = 5.0
# After a failed handshake: how long to wait for anything more.
AFTER_WAIT_S = 1.0
FIRST_BYTES = 16


def run(args, cwd):
    """Runs openssl quietly; exits with its message when it fails."""
    r = subprocess.run(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        sys.stderr.write("tlsfault: %s failed:\n%s\n" % (" ".join(args),
                                                         r.stdout.decode(errors="replace")))
        sys.exit(1)


def write(path, text):
    with open(path, "w", encoding="ascii") as f:
        f.write(text)


def make_certs(ca, ca_key, out):
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    ca = os.path.abspath(ca)
    ca_key = os.path.abspath(ca_key)
    req = ["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes"]

    # The emulator's own certificate, trusted by nobody but itself.
    run(req + ["-x509", "-days", "30", "-subj", "/CN=127.0.0.1",
               "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
               "-keyout", "selfsigned.key", "-out", "selfsigned.pem"], out)

    # A CA of its own and a localhost certificate it signed.
    run(req + ["-x509", "-days", "30", "-subj", "/CN=fault suite unrelated CA",
               "-keyout", "other-ca.key", "-out", "other-ca.pem"], out)
    write(os.path.join(out, "localhost.ext"),
          "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    run(req + ["-subj", "/CN=localhost", "-keyout", "other.key", "-out", "other.csr"], out)
    run(["openssl", "x509", "-req", "-in", "other.csr", "-CA", "other-ca.pem",
         "-CAkey", "other-ca.key", "-set_serial", "1001", "-days", "30",
         "-extfile", "localhost.ext", "-out", "other.pem"], out)

    # Another host's certificate from the right CA.
    write(os.path.join(out, "wronghost.ext"),
          "subjectAltName=DNS:wrong-host.invalid\nextendedKeyUsage=serverAuth\n")
    run(req + ["-subj", "/CN=wrong-host.invalid", "-keyout", "wronghost.key",
               "-out", "wronghost.csr"], out)
    run(["openssl", "x509", "-req", "-in", "wronghost.csr", "-CA", ca, "-CAkey", ca_key,
         "-set_serial", "1002", "-days", "30", "-extfile", "wronghost.ext",
         "-out", "wronghost.pem"], out)

    # An expired one from the right CA: OpenSSL 3.0's x509 cannot date a
    # certificate in the past, its ca command can (-startdate, -enddate).
    cadir = os.path.join(out, "ca-db")
    os.makedirs(cadir, exist_ok=True)
    write(os.path.join(cadir, "index.txt"), "")
    write(os.path.join(cadir, "serial"), "1003\n")
    write(os.path.join(out, "ca.cnf"),
          "[ca]\ndefault_ca = fault\n"
          "[fault]\n"
          "database = %s/index.txt\nnew_certs_dir = %s\nserial = %s/serial\n"
          "default_md = sha256\npolicy = any\nunique_subject = no\n"
          "[any]\ncommonName = supplied\n" % (cadir, cadir, cadir))
    run(req + ["-subj", "/CN=localhost", "-keyout", "expired.key", "-out", "expired.csr"], out)
    run(["openssl", "ca", "-batch", "-notext", "-config", "ca.cnf", "-cert", ca,
         "-keyfile", ca_key, "-in", "expired.csr", "-out", "expired.pem",
         "-startdate", "20200101000000Z", "-enddate", "20210101000000Z",
         "-extfile", "localhost.ext"], out)

    for name in os.listdir(out):
        if name.endswith(".key"):
            os.chmod(os.path.join(out, name), 0o600)


class Listener:
    def __init__(self, cert, key, events):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.events = events
        self.lock = threading.Lock()
        self.count = 0

    def record(self, ev):
        line = json.dumps(ev, sort_keys=True) + "\n"
        with self.lock:
            with open(self.events, "a", encoding="ascii") as f:
                f.write(line)
                f.flush()

    def serve(self, conn):
        with self.lock:
            self.count += 1
            n = self.count
        ev = {"n": n, "t": time.time(), "first": "", "tls": False, "plain_amqp": False, "handshake": "eof",
              "error": "", "after": 0, "app": 0, "app_head": ""}
        try:
            conn.settimeout(CONN_TIMEOUT_S)
            head = conn.recv(FIRST_BYTES, socket.MSG_PEEK)
            ev["first"] = head.hex()
            ev["tls"] = len(head) >= 1 and head[0] == 0x16
            ev["plain_amqp"] = head.startswith(b"AMQP")
            if head and ev["tls"]:
                self.handshake(conn, ev)
        except socket.timeout:
            ev["handshake"] = "timeout"
        except OSError as e:
            ev["error"] = ev["error"] or "socket: %s" % e
        finally:
            conn.close()
            self.record(ev)

    def handshake(self, conn, ev):
        """The handshake over memory BIOs, so that every raw byte is seen:
        what the client sends after the handshake failed is counted."""
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = self.ctx.wrap_bio(inc, out, server_side=True)
        while True:
            try:
                obj.do_handshake()
                ev["handshake"] = "ok"
                break
            except ssl.SSLWantReadError:
                pending = out.read()
                if pending:
                    conn.sendall(pending)
                data = conn.recv(65536)
                if not data:
                    ev["handshake"] = "eof"
                    return
                inc.write(data)
            except ssl.SSLError as e:
                pending = out.read()
                if pending:
                    try:
                        conn.sendall(pending)
                    except OSError:
                        pass
                ev["handshake"] = "failed"
                ev["error"] = e.reason or str(e)
                ev["after"] = inc.pending
                conn.settimeout(AFTER_WAIT_S)
                try:
                    while True:
                        data = conn.recv(65536)
                        if not data:
                            break
                        ev["after"] += len(data)
                except (socket.timeout, OSError):
                    pass
                return
        pending = out.read()
        if pending:
            conn.sendall(pending)
        # A client that did not verify goes on: read what it sends.
        got = b""
        try:
            while len(got) < 64:
                try:
                    chunk = obj.read(64)
                    if not chunk:
                        break  # the client closed the TLS session
                    got += chunk
                    continue
                except ssl.SSLWantReadError:
                    pass
                data = conn.recv(65536)
                if not data:
                    break
                inc.write(data)
        except (socket.timeout, ssl.SSLError, OSError):
            pass
        ev["app"] = len(got)
        ev["app_head"] = got[:8].hex()


def listen(cert, key, port_file, events):
    lst = Listener(cert, key, events)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    tmp = port_file + ".tmp"
    write(tmp, "%d\n" % srv.getsockname()[1])
    os.rename(tmp, port_file)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=lst.serve, args=(conn,), daemon=True).start()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("certs")
    c.add_argument("--ca", required=True)
    c.add_argument("--ca-key", required=True)
    c.add_argument("--out", required=True)
    l = sub.add_parser("listen")
    l.add_argument("--cert", required=True)
    l.add_argument("--key", required=True)
    l.add_argument("--port-file", required=True)
    l.add_argument("--events", required=True)
    a = p.parse_args()
    if a.cmd == "certs":
        make_certs(a.ca, a.ca_key, a.out)
    else:
        listen(a.cert, a.key, a.port_file, a.events)


if __name__ == "__main__":
    main()
