"""The SIP trunk's TLS listener: pjsua2's TlsConfig from ``sip.tls``, and a port check PJSIP lacks."""

from __future__ import annotations

import socket
from typing import Any

import pjsua2 as pj

from bridge.settings import SipTlsSettings


def check_port_free(host: str, port: int) -> None:
    """PJSIP 2.15 reports a TLS listener as ready on a TCP port another socket already listens
    on (and never accepts there): bind and listen first, as PJSIP will, to find out."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            probe.listen()
        except OSError as exc:
            raise OSError(f"SIP TLS port {host}:{port}: {exc.strerror or exc}") from None


def tls_config(tls: Any, settings: SipTlsSettings) -> None:
    """The TLS listener's settings (pjsua2 TlsConfig): certificate, key, trusted CAs, minimum 1.2."""
    tls.certFile = str(settings.cert_file or "")
    tls.privKeyFile = str(settings.key_file or "")
    tls.CaListFile = str(settings.ca_file or "")
    # The versions allowed (PJSIP's default also accepts TLS 1.0 and 1.1); TLS 1.3 where the
    # library's OpenSSL has it.
    tls.method = pj.PJSIP_TLSV1_2_METHOD
    tls.proto = pj.PJ_SSL_SOCK_PROTO_TLS1_2 | pj.PJ_SSL_SOCK_PROTO_TLS1_3
    tls.verifyClient = settings.verify_client
    tls.requireClientCert = settings.verify_client
