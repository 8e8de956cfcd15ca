"""Application labels: a vectorized labeller for the packet reader, and small Scapy layers.

Two tools for one question, "which application does this packet belong to?":

* ``label_apps`` answers it for whole batches in the reader's hot path, from ports and the
  first 16 payload bytes, with numpy only (under 0.1 s per million packets on the 2-core
  development machine). It never calls Scapy.
* ``IRC``, ``IMAP``, ``SMTP``, ``POP``, ``SIP``, ``SSH``, ``Telnet``, ``FTP`` and ``FTPData`` are
  dpkt-like Scapy layers (plain fields, no state), bound to their standard ports, for
  interactive use, for tests and for crafting payloads. They are built on first use (importing
  this module does not import Scapy, so ``necst process`` starts fast)::

      from necst.process.apps import SMTP     # builds and binds all layers
      SMTP(b"EHLO mail.example\\r\\n").verb  # b'EHLO'

  Dissecting arbitrary bytes with any of them never raises. Line protocols parse their first
  line (``verb``/``arguments`` or ``code``/``text``, ``status``, ``tag``, ``prefix``/``params``;
  "verb" because Scapy's Packet owns ``command``) and leave the rest in a Raw payload. ``SSH``
  dissects into ``SSH`` (identification string), ``SSHBinaryPacket`` (cleartext lengths and
  message code) or ``SSHEncrypted``; ``Telnet`` into ``TelnetCommand`` / ``TelnetData`` layers.

Labelling rule (see ``label_apps``): a payload signature on the packet's well-known port first,
then a strong signature on any port, then the port alone where the payload cannot contradict it.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "APP_LABELS",
    "APP_CODES",
    "label_apps",
    "app_dictionary",
    "register_layers",
    "LAYER_NAMES",
]

# Append only: codes are stored in datasets and models.
APP_LABELS: tuple[str, ...] = (
    "unknown", "http", "tls", "dns", "dhcp", "ntp", "mdns", "ssdp", "irc", "imap", "smtp",
    "pop", "sip", "ssh", "telnet", "ftp", "ftp-data", "quic", "llmnr", "netbios", "snmp", "smb",
)
APP_CODES: dict[str, int] = {name: code for code, name in enumerate(APP_LABELS)}
_C = APP_CODES

TCP, UDP = 6, 17
_NO_PORT = 65536  # index of the "no port" slot in the port tables

# Well-known server ports, per transport.
_TCP_PORTS: dict[str, tuple[int, ...]] = {
    "http": (80, 8000, 8080),
    "tls": (443, 465, 563, 636, 853, 989, 990, 992, 993, 994, 995, 5061, 8443),
    "dns": (53,),
    "irc": (194, *range(6660, 6670)),
    "imap": (143,),
    "smtp": (25, 587),
    "pop": (110,),
    "sip": (5060,),
    "ssh": (22,),
    "telnet": (23,),
    "ftp": (21,),
    "ftp-data": (20,),
    "smb": (139, 445),
}
_UDP_PORTS: dict[str, tuple[int, ...]] = {
    "dns": (53,),
    "dhcp": (67, 68),
    "ntp": (123,),
    "mdns": (5353,),
    "ssdp": (1900,),
    "sip": (5060,),
    "quic": (443,),
    "llmnr": (5355,),
    "netbios": (137, 138),
    "snmp": (161, 162),
}


def _port_table(ports: dict[str, tuple[int, ...]]) -> np.ndarray:
    table = np.zeros(_NO_PORT + 1, dtype=np.uint8)
    for name, plist in ports.items():
        table[list(plist)] = _C[name]
    return table


_TCP_TABLE = _port_table(_TCP_PORTS)
# Alternative ports that many unrelated services use too (IRC and SSH servers on 8000 in the
# nDPI captures): a payload there must show its signature; the port alone labels only
# packets without payload.
_SHARED_TCP_PORTS = np.zeros(_NO_PORT + 1, dtype=bool)
_SHARED_TCP_PORTS[[8000, 8080, 8443]] = True
_UDP_TABLE = _port_table(_UDP_PORTS)
# Every port that names an application of ours, TCP or UDP.
LABELLED_PORTS = np.flatnonzero((_TCP_TABLE[:_NO_PORT] > 0) | (_UDP_TABLE[:_NO_PORT] > 0))


# --- byte classes --------------------------------------------------------------------------

def _byte_class(chars: bytes = b"", ranges: tuple[tuple[int, int], ...] = ()) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    table[list(chars)] = True
    for lo, hi in ranges:
        table[lo:hi + 1] = True
    return table


_ALPHA = _byte_class(ranges=((0x41, 0x5A), (0x61, 0x7A)))
_DIGIT = _byte_class(ranges=((0x30, 0x39),))
_PRINT = _byte_class(ranges=((0x20, 0x7E),))
_GRAPH = _byte_class(ranges=((0x21, 0x7E),))
# Text a terminal user types or reads: printable, whitespace, BS, ESC, DEL, CR NUL, UTF-8.
_TEXT = _PRINT | _byte_class(b"\x00\x07\x08\t\n\x0b\x0c\r\x1b\x7f", ((0x80, 0xFE),))
_LINE_END = _byte_class(b" \r\n")
# IMAP tag characters: ATOM-CHAR without "+" (RFC 3501).
_TAG = _GRAPH & ~_byte_class(b'(){%*"\\]+')


# --- signature helpers (P: (m, 16) uint8 payload heads, L: (m,) captured lengths) ---------

_MASK = [np.uint64((1 << (8 * k)) - 1) for k in range(8)] + [np.uint64(2**64 - 1)]


def _prefix(P: np.ndarray, L: np.ndarray, s: bytes) -> np.ndarray:
    """Rows whose payload starts with ``s`` (compared as little-endian 64-bit words)."""
    W = P.view("<u8")
    k = len(s)
    head = np.uint64(int.from_bytes(s[:8], "little"))
    ok = (W[:, 0] & _MASK[min(k, 8)]) == head
    if k > 8:
        ok &= (W[:, 1] & _MASK[k - 8]) == np.uint64(int.from_bytes(s[8:], "little"))
    return ok


def _any_prefix(P: np.ndarray, L: np.ndarray, strings) -> np.ndarray:
    ok = np.zeros(len(P), dtype=bool)
    for s in strings:
        ok |= _prefix(P, L, s)
    return ok


def _run(P: np.ndarray, cls: np.ndarray, width: int = 16) -> np.ndarray:
    """Length of the leading run of bytes in ``cls`` among the first ``width`` (at most width)."""
    hit = cls[P[:, :width]]
    return np.where(hit.all(axis=1), width, hit.argmin(axis=1))


def _at(P: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """P[i, idx[i]], with 0 where idx is past the 16 bytes."""
    inside = idx < P.shape[1]
    out = P[np.arange(len(P)), np.minimum(idx, P.shape[1] - 1)]
    return np.where(inside, out, 0)


def _verb(P, L, lo: int, hi: int, cls=_ALPHA) -> np.ndarray:
    """A command word of lo..hi letters, then a space or the end of the line."""
    r = _run(P, cls, hi + 1)
    return (r >= lo) & (r <= hi) & (r < L) & _LINE_END[_at(P, r)]


def _reply_code(P, L) -> np.ndarray:
    """An FTP / SMTP reply: three digits, the first 1-5, then space, '-' or CR."""
    return ((L >= 4) & _DIGIT[P[:, :3]].all(axis=1) & (P[:, 0] >= 0x31) & (P[:, 0] <= 0x35)
            & np.isin(P[:, 3], (0x20, 0x2D, 0x0D)))


def _u16(P, i: int) -> np.ndarray:
    return (P[:, i].astype(np.int32) << 8) | P[:, i + 1]


# --- per-protocol signatures -----------------------------------------------------------

_HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"CONNECT ",
                 b"PATCH ", b"TRACE ")
_HTTP_STRONG = (*(m + t for m in (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"PATCH ")
                  for t in (b"/", b"http://", b"https://")),
                b"OPTIONS ", b"CONNECT ", b"HTTP/1.0 ", b"HTTP/1.1 ", b"PRI * HTTP/2.0")
_SIP_METHODS = (b"INVITE", b"REGISTER", b"OPTIONS", b"ACK", b"BYE", b"CANCEL", b"SUBSCRIBE",
                b"NOTIFY", b"MESSAGE", b"INFO", b"PRACK", b"UPDATE", b"REFER", b"PUBLISH")
_SIP_STRONG = (b"SIP/2.0 ", *(m + b" sip:" for m in _SIP_METHODS),
               *(m + b" sips:" for m in _SIP_METHODS))


def _sig_http(P, L, tcp):
    return _any_prefix(P, L, (*_HTTP_METHODS, b"HTTP/1.", b"HTTP/2", b"PRI * HTTP/2"))


def _sig_http_strong(P, L, tcp):
    return _any_prefix(P, L, _HTTP_STRONG)


def _sig_tls(P, L, tcp):
    """A TLS record header: content type 20-23, version 3.0-3.4, a record length <= 2^14+2048."""
    ok = (L >= 3) & (P[:, 0] >= 0x14) & (P[:, 0] <= 0x17) & (P[:, 1] == 3) & (P[:, 2] <= 4)
    return ok & ((L < 5) | ((_u16(P, 3) > 0) & (_u16(P, 3) <= 18432)))


def _sig_tls_strong(P, L, tcp):
    return _sig_tls(P, L, tcp) & (L >= 5)


def _sig_ssh(P, L, tcp):
    """The identification banner, or a cleartext binary packet (key exchange)."""
    banner = _prefix(P, L, b"SSH-")
    plen = (_u16(P, 0).astype(np.int64) << 16) | _u16(P, 2)
    pad = P[:, 4].astype(np.int64)
    binary = ((L >= 6) & (plen >= 12) & (plen <= 35000) & ((plen + 4) % 8 == 0)
              & (pad >= 4) & (pad < plen) & (P[:, 5] >= 1))
    return banner | binary


def _sig_ssh_strong(P, L, tcp):
    return _any_prefix(P, L, (b"SSH-1.", b"SSH-2."))


def _sig_ftp(P, L, tcp):
    return _reply_code(P, L) | _verb(P, L, 3, 4)


def _sig_smtp(P, L, tcp):
    return _reply_code(P, L) | _verb(P, L, 4, 8)


def _sig_pop(P, L, tcp):
    return _any_prefix(P, L, (b"+OK", b"-ERR", b"+ ")) | _verb(P, L, 3, 4)


def _sig_imap(P, L, tcp):
    """Untagged "* ", continuation "+ ", or a tag, a space and a word."""
    r = _run(P, _TAG, 13)
    tagged = (r >= 1) & (r <= 12) & (_at(P, r) == 0x20) & _ALPHA[_at(P, r + 1)] & (L > r + 1)
    return tagged | _any_prefix(P, L, (b"* ", b"+ "))


def _sig_irc(P, L, tcp):
    """":prefix", a command word, or a numeric reply."""
    prefixed = (L >= 2) & (P[:, 0] == 0x3A) & _GRAPH[P[:, 1]]
    numeric = (L >= 4) & _DIGIT[P[:, :3]].all(axis=1) & (P[:, 3] == 0x20)
    return prefixed | numeric | _verb(P, L, 3, 8)


def _sig_irc_strong(P, L, tcp):
    return _prefix(P, L, b"NICK ") & _GRAPH[P[:, 5]]


def _sig_sip(P, L, tcp):
    return _any_prefix(P, L, _SIP_STRONG)


def _sig_telnet(P, L, tcp):
    """IAC followed by a command, or terminal text."""
    iac = (L >= 2) & (P[:, 0] == 0xFF) & (P[:, 1] >= 0xF0)
    past = np.arange(P.shape[1])[None, :] >= L[:, None]
    text = (L >= 1) & (_TEXT[P] | past).all(axis=1)
    return iac | text


def _sig_any(P, L, tcp):
    return np.ones(len(P), dtype=bool)


def _dns_header(P, L, tcp, opcodes, max_qd: int, max_rr: int):
    """A DNS-style header: a known opcode, a defined rcode, small section counts.

    Over TCP the message follows a 2-byte length (RFC 1035 4.2.2).
    """
    H = np.where(tcp[:, None], P[:, 2:14], P[:, :12]).astype(np.int32)
    qd, an, ns, ar = ((H[:, i] << 8) | H[:, i + 1] for i in (4, 6, 8, 10))
    opcode_ok = np.zeros(16, dtype=bool)
    opcode_ok[list(opcodes)] = True
    ok = (L >= np.where(tcp, 14, 12)) & opcode_ok[(H[:, 2] >> 3) & 0xF] & ((H[:, 3] & 0xF) <= 10)
    ok &= (qd <= max_qd) & (an <= max_rr) & (ns <= max_rr) & (ar <= max_rr)
    return ok & (~tcp | (_u16(P, 0) >= 12))


def _sig_dns(P, L, tcp):
    return _dns_header(P, L, tcp, (0, 1, 2, 4, 5, 6), 16, 1024)


def _sig_mdns(P, L, tcp):
    return _dns_header(P, L, tcp, (0,), 256, 1024)


def _sig_llmnr(P, L, tcp):
    return _dns_header(P, L, tcp, (0,), 16, 256)


def _sig_netbios(P, L, tcp):
    """NBNS (UDP 137, a DNS-style header) or the datagram service (UDP 138)."""
    nbns = _dns_header(P, L, tcp, (0, 5, 6, 7, 8), 16, 256)
    datagram = (L >= 14) & (P[:, 0] >= 0x10) & (P[:, 0] <= 0x16)
    return ~tcp & (nbns | datagram)


def _sig_smb(P, L, tcp):
    """A NetBIOS session service header (RFC 1002 4.3), which frames SMB on TCP 139 and 445."""
    return tcp & (L >= 4) & ((P[:, 0] == 0) | ((P[:, 0] >= 0x81) & (P[:, 0] <= 0x85)))


def _sig_smb_strong(P, L, tcp):
    """A session message carrying an SMB1, SMB2 or SMB3-transform header."""
    return (_sig_smb(P, L, tcp) & (P[:, 0] == 0) & (P[:, 4] >= 0xFD)
            & (P[:, 5] == 0x53) & (P[:, 6] == 0x4D) & (P[:, 7] == 0x42))


def _sig_dhcp(P, L, tcp):
    """BOOTP: op 1 or 2, a known hardware type, an address length <= 16, few hops."""
    return ((L >= 16) & ((P[:, 0] == 1) | (P[:, 0] == 2)) & (P[:, 1] >= 1) & (P[:, 1] <= 40)
            & (P[:, 2] <= 16) & (P[:, 3] <= 16))


def _sig_ntp(P, L, tcp):
    """Version 1-4; modes 1-5 need the 48-byte header and a stratum <= 16, modes 6-7 12 bytes."""
    version, mode = (P[:, 0] >> 3) & 7, P[:, 0] & 7
    full = (mode >= 1) & (mode <= 5) & (L >= 48) & (P[:, 1] <= 16)
    control = (mode >= 6) & (L >= 12)
    return (version >= 1) & (version <= 4) & (full | control)


def _sig_ssdp(P, L, tcp):
    return _any_prefix(P, L, (b"M-SEARCH ", b"NOTIFY ", b"HTTP/1."))


def _sig_ssdp_strong(P, L, tcp):
    return ~tcp & _any_prefix(P, L, (b"M-SEARCH * HTTP/", b"NOTIFY * HTTP/1"))


def _sig_quic(P, L, tcp):
    """IETF QUIC long header of a known version, a short header, or a gQUIC public header.

    QUIC encrypts nearly everything, so on UDP 443 this mostly rejects the 0x80-0xBF first
    bytes that no QUIC version uses.
    """
    v = (_u16(P, 1).astype(np.int64) << 16) | _u16(P, 3)
    known = ((v == 0) | (v == 1) | (v == 0x6B3343CF) | (v == 0x709A50C4)
             | ((v >> 8) == 0xFF0000) | ((v >> 16) == 0x5130) | ((v >> 8) == 0xFACEB0))
    long_header = (L >= 7) & ((P[:, 0] & 0xC0) == 0xC0) & known
    short_header = (L >= 2) & ((P[:, 0] & 0xC0) == 0x40)
    gquic = (L >= 9) & ((P[:, 0] & 0xC0) == 0)  # public flags; server packets may be 0x00
    return long_header | short_header | gquic


def _sig_snmp(P, L, tcp):
    """BER SEQUENCE, then INTEGER version 0, 1 or 3 (v1, v2c, v3)."""
    off = np.select([P[:, 1] < 0x80, P[:, 1] == 0x81, P[:, 1] == 0x82], [2, 3, 4], 0)
    ok = (L >= 8) & (P[:, 0] == 0x30) & (off > 0)
    return (ok & (_at(P, off) == 0x02) & (_at(P, off + 1) == 0x01)
            & np.isin(_at(P, off + 2), (0, 1, 3)))


_SIGNATURES = {
    "http": _sig_http, "tls": _sig_tls, "dns": _sig_dns, "dhcp": _sig_dhcp, "ntp": _sig_ntp,
    "mdns": _sig_mdns, "ssdp": _sig_ssdp, "irc": _sig_irc, "imap": _sig_imap, "smtp": _sig_smtp,
    "pop": _sig_pop, "sip": _sig_sip, "ssh": _sig_ssh, "telnet": _sig_telnet, "ftp": _sig_ftp,
    "ftp-data": _sig_any, "quic": _sig_quic, "llmnr": _sig_llmnr, "netbios": _sig_netbios,
    "snmp": _sig_snmp, "smb": _sig_smb,
}
_SIG_BY_CODE = [None] + [_SIGNATURES[name] for name in APP_LABELS[1:]]

# Strong signatures, trusted on any port, in order of precedence: (label, transport, test).
# The first-byte filter keeps the full-batch pass cheap.
_STRONG = (
    ("sip", None, _sig_sip, b"SIABCMNOPRU"),
    ("http", TCP, _sig_http_strong, b"GPHDOCT"),
    ("ssh", TCP, _sig_ssh_strong, b"S"),
    ("tls", TCP, _sig_tls_strong, bytes(range(0x14, 0x18))),
    ("irc", TCP, _sig_irc_strong, b"N"),
    ("ssdp", UDP, _sig_ssdp_strong, b"MN"),
    ("smb", TCP, _sig_smb_strong, b"\x00"),
)
_STRONG = tuple((name, t, test, _byte_class(first)) for name, t, test, first in _STRONG)
_STRONG_FIRST = np.logical_or.reduce([first for _, _, _, first in _STRONG])


def _ports(port) -> np.ndarray:
    """Ports as table indices: -1 (absent) and anything out of range become ``_NO_PORT``."""
    as_unsigned = np.asarray(port).astype(np.int64, copy=False).astype(np.uint32)
    return np.minimum(as_unsigned, np.uint32(_NO_PORT))


def _take(P: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """P[rows] for a C-contiguous (n, 16) uint8 array, gathering 16-byte records at once."""
    return P.view("V16").ravel()[rows].view(np.uint8).reshape(-1, 16)


# Port tables stacked by transport: row 0 for neither TCP nor UDP, 1 TCP, 2 UDP.
_PORT_TABLE = np.concatenate([np.zeros(_NO_PORT + 1, np.uint8), _TCP_TABLE, _UDP_TABLE])
_TRANSPORT_ROW = np.zeros(256, dtype=np.int32)
_TRANSPORT_ROW[TCP], _TRANSPORT_ROW[UDP] = _NO_PORT + 1, 2 * (_NO_PORT + 1)


def label_apps(ip_proto, src_port, dst_port, payload, payload_len, *,
               strict: bool = False) -> np.ndarray:
    """Application code (an index into ``APP_LABELS``) of every packet; 0 is ``unknown``.

    ip_proto: uint8, 0 without IP; src_port / dst_port: ints, -1 where absent; payload:
    (n, >=16) uint8 holding the first payload bytes as captured, zero past them; payload_len:
    how many payload bytes were captured.

    A packet is labelled, first match wins:

    1. by its well-known port (TCP or UDP, either side; the lower port wins when both are
       known) when its first bytes pass that protocol's signature check;
    2. by a strong signature on any port ("GET /", "HTTP/1.1 ", "SSH-2.", "SIP/2.0 ", a TLS
       record header with a sane length, "NICK ", "M-SEARCH * HTTP/" over UDP, an SMB header
       after a NetBIOS session header);
    3. by its well-known port alone when it carries no payload (handshakes, ACKs, FINs belong
       to the flow), or, by default, when it is a TCP segment on a port other than the shared
       alternative ports 8000, 8080 and 8443.

    Why TCP segments keep their port's label when the check fails: TCP is a byte stream, and
    without reassembly a segment starts at a message boundary only by chance. A TLS record,
    an HTTP body, an SMTP DATA section, an encrypted SSH packet or a telnet keystroke spans or
    fills segments whose first bytes carry no header, so a failed check is no evidence against
    the port's protocol; refusing would label most packets of every bulk transfer ``unknown``.
    (tshark knows more: it reassembles streams and follows sessions.) A positive signature of
    another protocol (rule 2) still overrides the port. The shared ports are the exception:
    there the port itself is weak evidence. UDP is different: every datagram carries a whole
    message and must start with its header, so a UDP payload that fails the check on a
    well-known port is evidence that something else uses the port: it is ``unknown``.
    ``strict=True`` applies the UDP rule to TCP as well (a label then means "this packet's own
    bytes show it").

    Known limits: no flow state, so passive FTP data channels, STARTTLS upgrades after the
    first TLS records and protocols on unexpected ports (rule 2 aside) are labelled by port or
    ``unknown``.
    """
    proto = np.asarray(ip_proto).astype(np.uint8, copy=False)
    n = len(proto)
    P = np.asarray(payload)
    if P.ndim != 2 or P.shape[0] != n or P.shape[1] < 16:
        raise ValueError(f"payload must be (n, >=16) uint8, got shape {P.shape} for n={n}")
    P = np.ascontiguousarray(P[:, :16], dtype=np.uint8)
    L = np.clip(np.asarray(payload_len).astype(np.int64, copy=False), 0, None)
    is_tcp, is_udp = proto == TCP, proto == UDP
    sp, dp = _ports(src_port), _ports(dst_port)
    lo, hi = np.minimum(sp, dp), np.maximum(sp, dp)
    base = _TRANSPORT_ROW[proto]
    cand_lo, cand_hi = _PORT_TABLE[base + lo], _PORT_TABLE[base + hi]

    codes = np.zeros(n, dtype=np.uint8)
    # 1. port and signature; the higher port first so that the lower one overwrites it.
    for cand in (cand_hi, cand_lo):
        rows = np.flatnonzero((cand > 0) & (L > 0))
        if rows.size == 0:
            continue
        c = cand[rows]
        rows = rows[np.argsort(c, kind="stable")]  # radix sort: rows grouped by code
        ends = np.cumsum(np.bincount(c, minlength=len(APP_LABELS)))
        for code in np.flatnonzero(np.diff(ends, prepend=0)):
            sel = rows[ends[code - 1]:ends[code]]
            ok = _SIG_BY_CODE[code](_take(P, sel), L[sel], is_tcp[sel])
            codes[sel[ok]] = code
    # 2. strong signatures on any port, on the few rows whose first byte can start one.
    rows = np.flatnonzero(_STRONG_FIRST[P[:, 0]] & (codes == 0) & (L > 0) & (is_tcp | is_udp))
    if rows.size:
        Pr, Lr, tcp_r = _take(P, rows), L[rows], is_tcp[rows]
        first, done = Pr[:, 0], np.zeros(rows.size, dtype=bool)
        for name, transport, test, first_bytes in _STRONG:
            sub = np.flatnonzero(~done & first_bytes[first]
                                 & (True if transport is None else tcp_r == (transport == TCP)))
            if sub.size:
                ok = sub[test(_take(Pr, sub), Lr[sub], tcp_r[sub])]
                codes[rows[ok]] = _C[name]
                done[ok] = True
    # 3. port alone.
    by_port = np.where(cand_lo > 0, cand_lo, cand_hi)
    shared = _SHARED_TCP_PORTS[np.where(cand_lo > 0, lo, hi)]
    fallback = (codes == 0) & (by_port > 0) & ((L == 0) | (is_tcp & ~shared & (not strict)))
    return np.where(fallback, by_port, codes)


def app_dictionary(codes: np.ndarray):
    """The codes as the PacketTable's ``app`` column (a pyarrow dictionary array)."""
    import pyarrow as pa

    from necst.schema import arrow_array, string_array

    return pa.DictionaryArray.from_arrays(arrow_array(codes, pa.int32()), string_array(APP_LABELS))


# --- Scapy layers ---------------------------------------------------------------------------
#
# Built on first use so that importing this module (the reader's hot path) never imports Scapy.

LAYER_NAMES = ("IRC", "IMAP", "SMTP", "POP", "SIP", "SSH", "SSHBinaryPacket", "SSHEncrypted",
               "Telnet", "TelnetCommand", "TelnetData", "FTP", "FTPData")
_LAYERS: dict = {}

# Standard ports of each layer; the first is the one a crafted packet gets as destination.
_LAYER_PORTS = {
    "IRC": (6667, 194, *range(6660, 6667), 6668, 6669),
    "IMAP": (143,),
    "SMTP": (25, 587),
    "POP": (110,),
    "SIP": (5060,),
    "SSH": (22,),
    "Telnet": (23,),
    "FTP": (21,),
    "FTPData": (20,),
}
_MAX_CHAIN = 64  # most layers of one protocol stacked in one packet (IAC runs, pipelined lines)


def _split_line(s: bytes) -> tuple[bytes, bytes, bytes]:
    """(line, end of line, rest): the first line of ``s``, its CRLF / LF (or b"") and the rest."""
    i = s.find(b"\n")
    if i < 0:
        return s, b"", b""
    line, rest = s[:i], s[i + 1:]
    if line.endswith(b"\r"):
        return line[:-1], b"\r\n", rest
    return line, b"\n", rest


def _word(s: bytes) -> tuple[bytes, bytes]:
    """The first space-separated word of ``s`` and what follows the space."""
    head, _, tail = s.partition(b" ")
    return head, tail


def _build_layers() -> dict:
    from scapy.fields import (ByteEnumField, ByteField, ConditionalField, IntField,
                              ShortField, StrField, XByteField)
    from scapy.packet import Packet, Raw, bind_bottom_up, bind_layers
    from scapy.layers.inet import TCP as ScapyTCP, UDP as ScapyUDP

    def chain_depth(pkt, family) -> int:
        depth, under = 0, pkt.underlayer
        while isinstance(under, family) and depth <= _MAX_CHAIN:
            depth, under = depth + 1, under.underlayer
        return depth

    class _LineLayer(Packet):
        """One protocol line: parsed by ``_parse``, written back by ``_unparse``.

        What follows the first line stays in a Raw payload: without the session's state a
        following line may be a body (SMTP DATA, a FETCH literal) rather than a command.
        """

        def _parse(self, line: bytes) -> dict:
            raise NotImplementedError

        def _unparse(self) -> bytes:
            raise NotImplementedError

        def do_dissect(self, s: bytes) -> bytes:
            line, eol, rest = _split_line(s)
            self.raw_packet_cache_fields = {}
            self.fields.update(self._parse(line))
            self.fields["eol"] = eol
            self.raw_packet_cache = s[:len(s) - len(rest)]
            self.explicit = 1
            return rest

        def self_build(self) -> bytes:
            if self.raw_packet_cache is not None:
                return self.raw_packet_cache
            return self._unparse() + self.getfieldval("eol")

        def guess_payload_class(self, payload: bytes):
            return Raw

        def mysummary(self):
            return f"{self.name} " + repr(self._unparse())[2:-1][:60]

    class _CommandReply(_LineLayer):
        """FTP and SMTP: "VERB arguments" or "123 text" ("123-text" inside a multi-line reply)."""

        fields_desc = [
            StrField("verb", b""),
            StrField("arguments", b""),
            ShortField("code", None),  # None on a command line
            ByteField("more", 0),
            StrField("text", b""),
            StrField("eol", b"\r\n"),
        ]

        def _parse(self, line):
            if len(line) >= 3 and line[:3].isdigit() and (len(line) == 3 or line[3:4] in b" -"):
                return {"verb": b"", "arguments": b"", "code": int(line[:3]),
                        "more": int(line[3:4] == b"-"), "text": line[4:]}
            command, arguments = _word(line)
            return {"verb": command, "arguments": arguments, "code": None, "more": 0,
                    "text": b""}

        def _unparse(self):
            code = self.getfieldval("code")
            if code is not None:
                sep = b"-" if self.getfieldval("more") else b" "
                return b"%03d" % code + sep + self.getfieldval("text")
            arguments = self.getfieldval("arguments")
            return self.getfieldval("verb") + (b" " + arguments if arguments else b"")

        @property
        def is_reply(self) -> bool:
            return self.getfieldval("code") is not None

    class FTP(_CommandReply):
        """FTP control channel (RFC 959): a command or a reply line."""

        name = "FTP"

    class SMTP(_CommandReply):
        """SMTP (RFC 5321): a command or a reply line."""

        name = "SMTP"

    class POP(_LineLayer):
        """POP3 (RFC 1939): a command, or a "+OK" / "-ERR" / "+" status line."""

        name = "POP"
        fields_desc = [
            StrField("verb", b""),
            StrField("arguments", b""),
            StrField("status", b""),
            StrField("text", b""),
            StrField("eol", b"\r\n"),
        ]

        def _parse(self, line):
            if line[:1] in (b"+", b"-"):
                status, text = _word(line)
                return {"verb": b"", "arguments": b"", "status": status, "text": text}
            command, arguments = _word(line)
            return {"verb": command, "arguments": arguments, "status": b"", "text": b""}

        def _unparse(self):
            status = self.getfieldval("status")
            if status:
                text = self.getfieldval("text")
                return status + (b" " + text if text else b"")
            arguments = self.getfieldval("arguments")
            return self.getfieldval("verb") + (b" " + arguments if arguments else b"")

    class IMAP(_LineLayer):
        """IMAP4 (RFC 3501): "tag COMMAND arguments", "* DATA ..." or "+ continuation".

        Requests and tagged responses share a shape (". OK done" has tag "." and command
        "OK"); which one a line is depends on its direction.
        """

        name = "IMAP"
        fields_desc = [
            StrField("tag", b""),
            StrField("verb", b""),
            StrField("arguments", b""),
            StrField("eol", b"\r\n"),
        ]

        def _parse(self, line):
            tag, rest = _word(line)
            if tag == b"+":
                return {"tag": tag, "verb": b"", "arguments": rest}
            command, arguments = _word(rest)
            return {"tag": tag, "verb": command, "arguments": arguments}

        def _unparse(self):
            parts = [self.getfieldval(f) for f in ("tag", "verb", "arguments")]
            return b" ".join(p for p in parts if p)

    class IRC(_LineLayer):
        """IRC (RFC 2812): [":prefix "] command params."""

        name = "IRC"
        fields_desc = [
            StrField("prefix", b""),
            StrField("verb", b""),
            StrField("params", b""),
            StrField("eol", b"\r\n"),
        ]

        def _parse(self, line):
            prefix = b""
            if line.startswith(b":"):
                prefix, line = _word(line[1:])
            command, params = _word(line)
            return {"prefix": prefix, "verb": command, "params": params}

        def _unparse(self):
            prefix, params = self.getfieldval("prefix"), self.getfieldval("params")
            return ((b":" + prefix + b" " if prefix else b"") + self.getfieldval("verb")
                    + (b" " + params if params else b""))

        @property
        def trailing(self) -> bytes:
            """The last parameter, after " :" (the message text of PRIVMSG, NOTICE, ...)."""
            params = self.getfieldval("params")
            if params.startswith(b":"):
                return params[1:]
            return params.partition(b" :")[2]

    class SIP(Packet):
        """SIP (RFC 3261): request or status line, then the header block; the body is payload."""

        name = "SIP"
        fields_desc = [
            StrField("method", b""),
            StrField("uri", b""),
            StrField("version", b"SIP/2.0"),
            ShortField("status_code", None),  # None on a request
            StrField("reason", b""),
            StrField("headers", b""),
        ]

        def do_dissect(self, s):
            end = s.find(b"\r\n\r\n")
            head, rest = (s, b"") if end < 0 else (s[:end], s[end + 4:])
            start, _, headers = head.partition(b"\r\n")
            a, b_ = _word(start)
            c, d = _word(b_)
            if a.startswith(b"SIP/"):
                values = {"method": b"", "uri": b"", "version": a, "reason": d,
                          "status_code": int(c) if c.isdigit() and len(c) == 3 else None}
                if values["status_code"] is None:
                    values["reason"] = b_
            else:
                values = {"method": a, "uri": c, "version": d, "status_code": None, "reason": b""}
            values["headers"] = headers
            self.raw_packet_cache_fields = {}
            self.fields.update(values)
            self.raw_packet_cache = s[:len(s) - len(rest)]
            self.explicit = 1
            return rest

        def self_build(self):
            if self.raw_packet_cache is not None:
                return self.raw_packet_cache
            g = self.getfieldval
            if g("status_code") is not None:
                start = g("version") + b" %03d " % g("status_code") + g("reason")
            else:
                start = g("method") + b" " + g("uri") + b" " + g("version")
            headers = g("headers")
            return start + b"\r\n" + (headers + b"\r\n" if headers else b"") + b"\r\n"

        def header(self, name: str | bytes) -> bytes | None:
            """The value of the first header called ``name`` (case-insensitive), or None."""
            want = (name.encode() if isinstance(name, str) else name).strip().lower()
            for line in self.getfieldval("headers").split(b"\r\n"):
                key, sep, value = line.partition(b":")
                if sep and key.strip().lower() == want:
                    return value.strip()
            return None

        def guess_payload_class(self, payload):
            return Raw

    _SSH_MESSAGES = {
        1: "DISCONNECT", 2: "IGNORE", 3: "UNIMPLEMENTED", 4: "DEBUG", 5: "SERVICE_REQUEST",
        6: "SERVICE_ACCEPT", 7: "EXT_INFO", 20: "KEXINIT", 21: "NEWKEYS", 30: "KEX_30",
        31: "KEX_31", 32: "KEX_32", 33: "KEX_33", 34: "KEX_34", 50: "USERAUTH_REQUEST",
        51: "USERAUTH_FAILURE", 52: "USERAUTH_SUCCESS", 53: "USERAUTH_BANNER",
        80: "GLOBAL_REQUEST", 90: "CHANNEL_OPEN", 94: "CHANNEL_DATA",
    }

    def ssh_binary_plausible(s: bytes) -> bool:
        if len(s) < 6:
            return False
        packet_length, padding = int.from_bytes(s[:4], "big"), s[4]
        return (12 <= packet_length <= 35000 and (packet_length + 4) % 8 == 0
                and 4 <= padding < packet_length and s[5] >= 1)

    class SSH(Packet):
        """SSH identification string "SSH-protoversion-softwareversion comments" (RFC 4253 4.2).

        The comments are in ``software_comments`` (Scapy's Packet owns ``comment(s)``).

        Dissecting bytes that do not start with "SSH-" gives an ``SSHBinaryPacket`` when its
        length fields are those of a cleartext packet (key exchange), else ``SSHEncrypted``.
        """

        name = "SSH"
        fields_desc = [
            StrField("protocol", b"2.0"),
            StrField("software", b""),
            StrField("software_comments", b""),
            StrField("eol", b"\r\n"),
        ]

        @classmethod
        def dispatch_hook(cls, _pkt=None, *args, **kargs):
            if cls is SSH and _pkt and not _pkt.startswith(b"SSH-"):
                return SSHBinaryPacket if ssh_binary_plausible(_pkt) else SSHEncrypted
            return cls

        def do_dissect(self, s):
            line, eol, rest = _split_line(s)
            protocol, _, software = line[4:].partition(b"-")
            software, comments = _word(software)
            self.raw_packet_cache_fields = {}
            self.fields.update(protocol=protocol, software=software, software_comments=comments,
                               eol=eol)
            self.raw_packet_cache = s[:len(s) - len(rest)]
            self.explicit = 1
            return rest

        def self_build(self):
            if self.raw_packet_cache is not None:
                return self.raw_packet_cache
            g = self.getfieldval
            comments = g("software_comments")
            return (b"SSH-" + g("protocol") + b"-" + g("software")
                    + (b" " + comments if comments else b"") + g("eol"))

        @property
        def banner(self) -> bytes:
            """The identification string without its line end."""
            return self.self_build().rstrip(b"\r\n")

        def guess_payload_class(self, payload):
            return SSH if chain_depth(self, SSH) < _MAX_CHAIN else Raw

    class SSHBinaryPacket(SSH):
        """A cleartext SSH binary packet (RFC 4253 6): lengths and message number."""

        name = "SSH binary packet"
        fields_desc = [
            IntField("packet_length", None),
            ByteField("padding_length", 4),
            ByteEnumField("message_code", 20, _SSH_MESSAGES),
        ]
        self_build = Packet.self_build

        def do_dissect(self, s):
            if len(s) >= 6:
                return Packet.do_dissect(self, s)
            # Too short for the header: no field values, the bytes stay in the payload.
            self.raw_packet_cache_fields = {}
            self.fields.update(packet_length=None, padding_length=None, message_code=None)
            self.raw_packet_cache = b""
            self.explicit = 1
            return s

        def extract_padding(self, s):
            body = max(0, (self.packet_length or 0) - 2)
            return s[:body], s[body:]

        def post_build(self, pkt, pay):
            if self.packet_length is None:
                pkt = (len(pkt) - 4 + len(pay)).to_bytes(4, "big") + pkt[4:]
            return pkt + pay

        def guess_payload_class(self, payload):
            return Raw

    class SSHEncrypted(SSH):
        """SSH bytes with no cleartext header: an encrypted packet or a part of one."""

        name = "SSH encrypted"
        fields_desc = [StrField("data", b"")]
        do_dissect = Packet.do_dissect
        self_build = Packet.self_build

    _TELNET_COMMANDS = {
        240: "SE", 241: "NOP", 242: "DM", 243: "BRK", 244: "IP", 245: "AO", 246: "AYT",
        247: "EC", 248: "EL", 249: "GA", 250: "SB", 251: "WILL", 252: "WONT", 253: "DO",
        254: "DONT", 255: "IAC",
    }
    _TELNET_OPTIONS = {
        0: "BINARY", 1: "ECHO", 3: "SUPPRESS_GO_AHEAD", 5: "STATUS", 6: "TIMING_MARK",
        24: "TERMINAL_TYPE", 31: "NAWS", 32: "TERMINAL_SPEED", 33: "REMOTE_FLOW_CONTROL",
        34: "LINEMODE", 35: "X_DISPLAY_LOCATION", 36: "ENVIRON", 39: "NEW_ENVIRON",
    }

    class Telnet(Packet):
        """Telnet (RFC 854): dissects into ``TelnetCommand`` (IAC ...) and ``TelnetData`` layers."""

        name = "Telnet"
        fields_desc = []

        @classmethod
        def dispatch_hook(cls, _pkt=None, *args, **kargs):
            if cls is Telnet and _pkt is not None:
                is_command = len(_pkt) >= 2 and _pkt[0] == 0xFF and _pkt[1] != 0xFF
                return TelnetCommand if is_command else TelnetData
            return cls

        def guess_payload_class(self, payload):
            return Telnet if chain_depth(self, Telnet) < _MAX_CHAIN else Raw

    class TelnetCommand(Telnet):
        """IAC command [option] [sub-negotiation data, up to IAC SE]."""

        name = "Telnet command"
        fields_desc = [
            XByteField("iac", 0xFF),
            ByteEnumField("code", 253, _TELNET_COMMANDS),
            ConditionalField(ByteEnumField("option", 1, _TELNET_OPTIONS),
                             lambda p: 250 <= p.code <= 254),
            ConditionalField(StrField("subnegotiation", b""), lambda p: p.code == 250),
        ]

        def do_dissect(self, s):
            command = s[1] if len(s) > 1 else 0
            values = {"iac": s[0] if s else 0xFF, "code": command}
            used = min(len(s), 2)
            if 250 <= command <= 254 and len(s) > 2:
                values["option"] = s[2]
                used = 3
            if command == 250:
                end = s.find(b"\xff\xf0", used)
                end = len(s) if end < 0 else end
                values["subnegotiation"], used = s[used:end], end
            self.raw_packet_cache_fields = {}
            self.fields.update(values)
            self.raw_packet_cache = s[:used]
            self.explicit = 1
            return s[used:]

        def self_build(self):
            if self.raw_packet_cache is not None:
                return self.raw_packet_cache
            out = bytes([self.iac, self.code])
            if 250 <= self.code <= 254:
                out += bytes([self.option])
            if self.code == 250:
                out += self.subnegotiation or b""
            return out

    class TelnetData(Telnet):
        """Terminal data up to the next IAC command (IAC IAC, a literal 0xFF, stays in data)."""

        name = "Telnet data"
        fields_desc = [StrField("data", b"")]

        def do_dissect(self, s):
            end = 1 if s[:2] == b"\xff\xff" else 0
            while True:
                end = s.find(b"\xff", end)
                if end < 0 or end + 1 >= len(s) or s[end + 1] != 0xFF:
                    break
                end += 2
            end = len(s) if end < 0 or end + 1 >= len(s) else end
            self.raw_packet_cache_fields = {}
            self.fields["data"] = s[:end]
            self.raw_packet_cache = s[:end]
            self.explicit = 1
            return s[end:]

    class FTPData(Packet):
        """FTP data channel: the transferred bytes, as they are."""

        name = "FTP data"
        fields_desc = [StrField("data", b"")]

    layers = {name: obj for name, obj in locals().items() if name in LAYER_NAMES}
    for cls in layers.values():
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
    for name, ports in _LAYER_PORTS.items():
        cls = layers[name]
        for port in ports:
            bind_bottom_up(ScapyTCP, cls, sport=port)
            bind_bottom_up(ScapyTCP, cls, dport=port)
        bind_layers(ScapyTCP, cls, dport=ports[0])  # crafting: TCP()/SMTP() gets dport 25
    bind_bottom_up(ScapyUDP, layers["SIP"], sport=5060)
    bind_layers(ScapyUDP, layers["SIP"], dport=5060)
    return layers


def register_layers() -> dict:
    """Build the Scapy layers and bind them to their ports (once); returns them by name."""
    if not _LAYERS:
        _LAYERS.update(_build_layers())
    return dict(_LAYERS)


def __getattr__(name: str):
    if name in LAYER_NAMES:
        return register_layers()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(LAYER_NAMES))
