"""A real SMTP server for tests/notify.rs: aiosmtpd with STARTTLS (required)
or implicit TLS, AUTH PLAIN/LOGIN over TLS only. Each message is written to
OUT/<n>.json, decoded by Python's own email package (not by milebatch):
the decoded subject and bodies, and the raw headers that say how they were
encoded. Prints "ready" once it listens.

usage: smtp_sink.py PORT CERT KEY MODE(starttls|tls) OUT USER PASSWORD
"""
import asyncio
import email
import email.policy
import json
import os
import re
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, cert, key, mode, out, user, password = sys.argv[1:8]
port = int(port)
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user \
        and auth_data.password.decode() == password
    return AuthResult(success=ok, handled=False)


def raw_subject(raw):
    """The Subject header as sent (encoded-words, folding removed)."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    m = re.search(rb"^Subject:((?:.*)(?:\r\n[ \t].*)*)", head, re.M | re.I)
    return m.group(1).replace(b"\r\n", b"").decode("ascii", "replace").strip() if m else ""


class Sink:
    n = 0

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        parts = []
        for part in msg.walk():
            if part.is_multipart():
                continue
            parts.append({
                "content_type": part.get_content_type(),
                "charset": part.get_content_charset(),
                "cte": (part.get("Content-Transfer-Encoding") or "").lower(),
                "text": part.get_content(),
            })
        Sink.n += 1
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "subject": str(msg["subject"]),
            "raw_subject": raw_subject(raw),
            "parts": parts,
            "tls": mode == "tls" or session.ssl is not None,
            "auth": session.authenticated,
            "received": time.time(),
        }
        path = os.path.join(out, "%04d.json" % Sink.n)
        with open(path + ".tmp", "w") as f:
            json.dump(record, f, ensure_ascii=False)
        os.rename(path + ".tmp", path)
        return "250 OK"


kwargs = dict(hostname="127.0.0.1", port=port, authenticator=authenticator,
              auth_require_tls=True, ready_timeout=10)
if mode == "starttls":
    kwargs.update(tls_context=ctx, require_starttls=True)
else:
    # aiosmtpd counts only STARTTLS as TLS for auth_require_tls; here the
    # whole connection is TLS from the first byte.
    kwargs.update(ssl_context=ctx, auth_require_tls=False)
controller = Controller(Sink(), **kwargs)
controller.start()
print("ready", flush=True)
try:
    while True:
        time.sleep(3600)
finally:
    controller.stop()
