"""Application labels and the custom Scapy layers (necst.process.apps).

Field values asserted on real packets were read with tshark from the same frames (the
comments name the tshark fields); the labeller is compared with tshark's frame.protocols.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from necst.process.apps import APP_CODES, APP_LABELS, app_dictionary, label_apps
from necst.schema import PACKET_SCHEMA

TCP, UDP = 6, 17


# --- helpers ----------------------------------------------------------------------------

def make_rows(*rows):
    """Labeller inputs from (ip_proto, src_port, dst_port, payload bytes) tuples."""
    n = len(rows)
    payload = np.zeros((n, 16), np.uint8)
    for i, (_, _, _, data) in enumerate(rows):
        head = data[:16]
        payload[i, :len(head)] = np.frombuffer(head, np.uint8)
    return (np.array([r[0] for r in rows], np.uint8), np.array([r[1] for r in rows], np.int32),
            np.array([r[2] for r in rows], np.int32), payload,
            np.array([len(r[3]) for r in rows], np.int64))


def labels(*rows, **kwargs):
    return [APP_LABELS[c] for c in label_apps(*make_rows(*rows), **kwargs)]


def label1(proto, sport, dport, data, **kwargs):
    return labels((proto, sport, dport, data), **kwargs)[0]


def packet_inputs(packets):
    """Labeller inputs built with Scapy from dissected packets (tests only)."""
    from scapy.all import IP, TCP as STCP, UDP as SUDP, raw
    from scapy.layers.inet6 import IPv6

    rows = []
    for p in packets:
        proto, sport, dport, data = 0, -1, -1, b""
        ip = p.getlayer(IP) or p.getlayer(IPv6)
        if ip is not None:
            proto = ip.proto if isinstance(ip, IP) else ip.nh
            l4 = ip.payload
            first_fragment = not (isinstance(ip, IP) and ip.frag)
            if type(l4) in (STCP, SUDP) and first_fragment:
                sport, dport, data = l4.sport, l4.dport, raw(l4.payload)
                header = l4.dataofs * 4 if type(l4) is STCP else 8
                if isinstance(ip, IP):  # drop Ethernet padding
                    data = data[:max(0, ip.len - ip.ihl * 4 - header)]
                else:
                    data = data[:max(0, ip.plen - header)]
        rows.append((proto, sport, dport, data))
    return make_rows(*rows)


def read_packets(path, count):
    from scapy.all import rdpcap  # scapy.all registers the link layers (Ethernet, ...)

    return rdpcap(str(path), count=count)


def tcp_payload(packet) -> bytes:
    from scapy.all import TCP as STCP, raw

    return raw(packet[STCP].payload)


# --- labeller on hand-made rows --------------------------------------------------------------

def test_label_table_starts_with_unknown_and_codes_match():
    assert APP_LABELS[0] == "unknown"
    assert len(set(APP_LABELS)) == len(APP_LABELS)
    assert all(APP_CODES[name] == i for i, name in enumerate(APP_LABELS))
    for name in ("http", "tls", "dns", "dhcp", "ntp", "mdns", "ssdp", "irc", "imap", "smtp",
                 "pop", "sip", "ssh", "telnet", "ftp", "ftp-data"):
        assert name in APP_CODES


DNS_QUERY = bytes.fromhex("1a2b01000001000000000000") + b"\x07example\x03com\x00\x00\x01\x00\x01"
MDNS_RESPONSE = bytes.fromhex("000084000000000100000000") + b"\x05_http"
LLMNR_QUERY = bytes.fromhex("8c5a00000001000000000000") + b"\x04wpad\x00"
NBNS_QUERY = bytes.fromhex("80f001100001000000000000") + b"\x20CKAAAA"
DHCP_DISCOVER = bytes.fromhex("010106003903f326000000000000000000000000") + bytes(220)
NTP_CLIENT = bytes([0x23]) + bytes(47)  # version 4, mode 3
SNMP_GET = bytes.fromhex("302602010104067075626c6963a019020101020100020100300e300c06082b060102")
QUIC_INITIAL = bytes.fromhex("c300000001088394c8f03e5157080000449e")
TLS_HELLO = bytes.fromhex("160301020001") + bytes.fromhex("0001fc0303") + bytes(20)
TLS_APPDATA = bytes.fromhex("1703030045") + bytes(range(40))
SMB2 = bytes.fromhex("00000078fe534d4240000000")

POSITIVE = [
    ("http", TCP, 51000, 80, b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("http", TCP, 80, 51000, b"HTTP/1.1 200 OK\r\n"),
    ("http", TCP, 51000, 8080, b"POST /form HTTP/1.1\r\n"),
    ("http", TCP, 51000, 9999, b"GET / HTTP/1.1\r\n"),  # strong signature, any port
    ("http", TCP, 9999, 51000, b"HTTP/1.0 404 Not Found\r\n"),
    ("tls", TCP, 51000, 443, TLS_HELLO),
    ("tls", TCP, 993, 51000, TLS_APPDATA),
    ("tls", TCP, 51000, 4433, TLS_HELLO),  # record header with a sane length, any port
    ("dns", UDP, 51000, 53, DNS_QUERY),
    ("dns", TCP, 51000, 53, len(DNS_QUERY).to_bytes(2, "big") + DNS_QUERY),
    ("dhcp", UDP, 68, 67, DHCP_DISCOVER),
    ("ntp", UDP, 51000, 123, NTP_CLIENT),
    ("mdns", UDP, 5353, 5353, MDNS_RESPONSE),
    ("ssdp", UDP, 51000, 1900, b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n"),
    ("ssdp", UDP, 1900, 51000, b"HTTP/1.1 200 OK\r\nST: upnp:rootdevice\r\n"),
    ("ssdp", UDP, 51000, 32412, b"M-SEARCH * HTTP/1.1\r\n"),  # strong, any UDP port
    ("irc", TCP, 51000, 6667, b"USER guest 0 * :Guest\r\n"),
    ("irc", TCP, 6667, 51000, b":irc.example.net 001 guest :Welcome\r\n"),
    ("irc", TCP, 51000, 8001, b"NICK guest\r\n"),  # strong, any port
    ("imap", TCP, 143, 51000, b"* OK [CAPABILITY IMAP4rev1] ready\r\n"),
    ("imap", TCP, 51000, 143, b"a001 LOGIN bob secret\r\n"),
    ("smtp", TCP, 25, 51000, b"220 mail.example ESMTP Postfix\r\n"),
    ("smtp", TCP, 51000, 587, b"EHLO client.example\r\n"),
    ("smtp", TCP, 51000, 25, b"STARTTLS\r\n"),
    ("pop", TCP, 110, 51000, b"+OK POP3 ready\r\n"),
    ("pop", TCP, 51000, 110, b"user bob\r\n"),
    ("sip", UDP, 5060, 5060, b"INVITE sip:bob@biloxi.example SIP/2.0\r\n"),
    ("sip", UDP, 5060, 51000, b"SIP/2.0 200 OK\r\n"),
    ("sip", TCP, 51000, 5080, b"REGISTER sip:registrar.example SIP/2.0\r\n"),  # strong
    ("ssh", TCP, 22, 51000, b"SSH-2.0-OpenSSH_9.6\r\n"),
    ("ssh", TCP, 51000, 2222, b"SSH-2.0-OpenSSH_9.6\r\n"),  # strong, any port
    ("ssh", TCP, 51000, 22, bytes.fromhex("0000038404140000")),  # KEXINIT: length 900, pad 4
    ("telnet", TCP, 23, 51000, b"\xff\xfd\x18\xff\xfd\x20"),
    ("telnet", TCP, 51000, 23, b"ls -l\r\n"),
    ("ftp", TCP, 21, 51000, b"220 (vsFTPd 3.0.3)\r\n"),
    ("ftp", TCP, 51000, 21, b"USER anonymous\r\n"),
    ("ftp-data", TCP, 20, 51000, bytes(range(200, 256))),
    ("quic", UDP, 51000, 443, QUIC_INITIAL),
    ("quic", UDP, 443, 51000, bytes([0x45]) + bytes(range(30))),  # short header
    ("llmnr", UDP, 51000, 5355, LLMNR_QUERY),
    ("netbios", UDP, 137, 137, NBNS_QUERY),
    ("netbios", UDP, 138, 138, bytes([0x11, 0x02]) + bytes(20)),
    ("snmp", UDP, 51000, 161, SNMP_GET),
    ("smb", TCP, 51000, 445, SMB2),
    ("smb", TCP, 51000, 7445, SMB2),  # strong: SMB header after a session header
]


@pytest.mark.parametrize("want, proto, sport, dport, data", POSITIVE,
                         ids=[f"{p[0]}-{p[2]}-{p[3]}" for p in POSITIVE])
def test_each_label_on_its_signature(want, proto, sport, dport, data):
    assert label1(proto, sport, dport, data) == want


def test_every_label_has_a_positive_case():
    assert {p[0] for p in POSITIVE} == set(APP_LABELS) - {"unknown"}


def test_batch_equals_rows_one_by_one_and_order_does_not_matter():
    rows = [p[1:] for p in POSITIVE] + [(TCP, 1234, 4321, b"\x00garbage"), (0, -1, -1, b"")]
    batch = labels(*rows)
    assert batch == [label1(*r) for r in rows]
    order = np.random.default_rng(7).permutation(len(rows))
    assert labels(*[rows[i] for i in order]) == [batch[i] for i in order]


NULL_CASES = [
    ("no IP", 0, -1, -1, b""),
    ("ICMP", 1, -1, -1, b"\x08\x00abcd"),
    ("TCP without ports (a later fragment)", TCP, -1, -1, b""),
    ("unknown TCP ports", TCP, 40000, 50000, bytes(range(16))),
    ("unknown UDP ports", UDP, 40000, 50000, b"hello there"),
    ("SCTP on port 80", 132, 51000, 80, b"GET / HTTP/1.1\r\n"),
    ("GET cut before the space", TCP, 51000, 9999, b"GET"),
    ("lowercase get", TCP, 51000, 9999, b"get / http/1.1\r\n"),
    ("SSH- without a version", TCP, 51000, 9999, b"SSH-x"),
    ("TLS-like header, zero length", TCP, 51000, 9999, bytes.fromhex("1603010000")),
]


@pytest.mark.parametrize("case, proto, sport, dport, data", NULL_CASES,
                         ids=[c[0] for c in NULL_CASES])
def test_null_cases_are_unknown(case, proto, sport, dport, data):
    assert label1(proto, sport, dport, data) == "unknown"


@pytest.mark.parametrize("proto, port, want", [
    (TCP, 80, "http"), (TCP, 8000, "http"), (TCP, 443, "tls"), (TCP, 22, "ssh"),
    (TCP, 21, "ftp"), (TCP, 25, "smtp"), (TCP, 6667, "irc"), (UDP, 53, "dns"),
    (UDP, 123, "ntp"), (UDP, 443, "quic"), (UDP, 5060, "sip"), (TCP, 5060, "sip"),
])
def test_no_payload_is_labelled_by_port_either_side(proto, port, want):
    assert label1(proto, 51000, port, b"") == want  # e.g. a SYN
    assert label1(proto, port, 51000, b"") == want  # and its SYN-ACK


MISMATCHES = [
    # (why, proto, sport, dport, payload, default label, strict label)
    ("UDP datagram must start with a header", UDP, 51000, 53, b"GET / HTTP/1.1\r\n",
     "unknown", "unknown"),
    ("NTP with version 0", UDP, 51000, 123, bytes(48), "unknown", "unknown"),
    ("NTP too short", UDP, 51000, 123, b"\x23" + bytes(10), "unknown", "unknown"),
    ("DHCP with op 7", UDP, 68, 67, b"\x07" + bytes(300), "unknown", "unknown"),
    ("QUIC first byte 0x80-0xBF", UDP, 51000, 443, b"\x9a" + bytes(40), "unknown", "unknown"),
    ("SSDP port, not SSDP", UDP, 51000, 1900, b"\x00\x01\x02\x03", "unknown", "unknown"),
    ("TLS continuation on 443", TCP, 443, 51000, bytes(range(100, 140)), "tls", "unknown"),
    ("SMTP DATA body on 25", TCP, 51000, 25, b"Subject: hi\r\n\r\nbody", "smtp", "unknown"),
    ("encrypted SSH on 22", TCP, 22, 51000, bytes(range(7, 60)), "ssh", "unknown"),
    ("SSH banner on port 80", TCP, 51000, 80, b"SSH-2.0-OpenSSH_9.6\r\n", "ssh", "ssh"),
    ("HTTP request on port 22", TCP, 51000, 22, b"GET / HTTP/1.1\r\n", "http", "http"),
    ("HTTP on the SIP port", TCP, 51000, 5060, b"GET / HTTP/1.1\r\n", "http", "http"),
    ("TLS after STARTTLS on 143", TCP, 51000, 143, TLS_HELLO, "tls", "tls"),
    ("binary on shared port 8000", TCP, 8000, 51000, bytes(range(1, 30)), "unknown", "unknown"),
    ("binary on shared port 8080", TCP, 51000, 8080, bytes(range(1, 30)), "unknown", "unknown"),
]


@pytest.mark.parametrize("why, proto, sport, dport, data, default, strict", MISMATCHES,
                         ids=[m[0] for m in MISMATCHES])
def test_signature_mismatch_rules(why, proto, sport, dport, data, default, strict):
    assert label1(proto, sport, dport, data) == default
    assert label1(proto, sport, dport, data, strict=True) == strict


def test_lower_known_port_wins_when_both_sides_are_known():
    # A DNS query from the mDNS port to 53: both signatures pass, 53 is the server side.
    assert label1(UDP, 5353, 53, DNS_QUERY) == "dns"
    # The higher port still decides when the lower one's check fails.
    assert label1(UDP, 53, 5353, MDNS_RESPONSE) == "dns"
    assert label1(UDP, 123, 5353, MDNS_RESPONSE) == "mdns"


def test_inputs_wider_than_16_bytes_and_empty_batches():
    proto, sport, dport, payload, plen = make_rows(*(p[1:] for p in POSITIVE))
    wide = np.concatenate([payload, np.full((len(payload), 8), 0xEE, np.uint8)], axis=1)
    assert np.array_equal(label_apps(proto, sport, dport, wide, plen),
                          label_apps(proto, sport, dport, payload, plen))
    empty = label_apps(np.zeros(0, np.uint8), np.zeros(0, np.int32), np.zeros(0, np.int32),
                       np.zeros((0, 16), np.uint8), np.zeros(0, np.int64))
    assert empty.shape == (0,)
    with pytest.raises(ValueError):
        label_apps(proto, sport, dport, payload[:, :8], plen)


def test_random_rows_never_fail_and_stay_in_range():
    rng = np.random.default_rng(1)
    n = 20_000
    proto = rng.choice(np.array([0, 1, 6, 17, 132], np.uint8), n)
    sport = rng.choice(np.array([-1, 20, 22, 53, 80, 123, 443, 1900, 5060, 5353, 40000]), n)
    dport = rng.integers(-1, 65536, n)
    payload = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    plen = rng.integers(0, 1500, n)
    payload[plen < 16] = np.where(np.arange(16) < plen[plen < 16, None], payload[plen < 16], 0)
    codes = label_apps(proto, sport, dport, payload, plen)
    assert codes.shape == (n,) and codes.max() < len(APP_LABELS)
    assert np.array_equal(codes, label_apps(proto, sport, dport, payload, plen))
    assert not codes[(proto != 6) & (proto != 17)].any()


def test_app_dictionary_matches_the_packet_schema():
    codes = label_apps(*make_rows(*(p[1:] for p in POSITIVE[:5])))
    column = app_dictionary(codes)
    assert column.type == PACKET_SCHEMA.field("app").type
    assert column.to_pylist() == [p[0] for p in POSITIVE[:5]]
    assert isinstance(column, pa.DictionaryArray)


def test_importing_the_module_does_not_import_scapy():
    code = "import sys, necst.process.apps; sys.exit('scapy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- labeller against tshark on real packets -------------------------------------------------

# tshark protocol names -> necst labels; the last covered name in frame.protocols wins
# (eth:ip:tcp:nbss:smb2 is smb, eth:ip:tcp:http:tls, a CONNECT tunnel, is tls).
TSHARK_NAMES = {
    "http": "http", "tls": "tls", "dns": "dns", "dhcp": "dhcp", "ntp": "ntp", "mdns": "mdns",
    "ssdp": "ssdp", "irc": "irc", "imap": "imap", "smtp": "smtp", "pop": "pop", "sip": "sip",
    "ssh": "ssh", "telnet": "telnet", "ftp": "ftp", "ftp-data": "ftp-data", "quic": "quic",
    "gquic": "quic", "llmnr": "llmnr", "nbns": "netbios", "nbdgm": "netbios", "nbss": "smb",
    "smb": "smb", "smb2": "smb", "snmp": "snmp",
}

ORACLE_FILES = [
    ("apps/ndpi/irc.pcap", 40), ("apps/ndpi/imap-starttls.pcap", 40),
    ("apps/ndpi/pop3.pcap", 40), ("apps/ndpi/ssh.pcap", 150), ("apps/ndpi/telnet.pcap", 40),
    ("apps/ndpi/ftp.pcap", 120), ("apps/ndpi/ftp-start-tls.pcap", 60),
    ("apps/ndpi/http_on_sip_port.pcap", 10),
    ("corpus/chrissanders/mail_sender_client_1.pcapng", 30),
    ("apps/ndpi/ssdp-m-search.pcap", 5), ("apps/ndpi/quic.pcap", 60),
    ("apps/ndpi/google_ssl.pcap", 30), ("apps/ndpi/gnutella.pcap", 150),
    ("apps/ndpi/android.pcap", 150), ("apps/ndpi/netbios.pcap", 30), ("apps/ndpi/smbv1.pcap", 10),
    ("apps/ndpi/http_connect.pcap", 100), ("apps/ndpi/dns.pcap", 10), ("apps/ndpi/NTPv4.pcap", 5),
    ("apps/ndpi/dos_win98_smb_netbeui.pcap", 60),
]


def tshark_labels(tshark, path, count):
    out = subprocess.run([tshark, "-r", str(path), "-c", str(count), "-T", "fields",
                          "-e", "frame.protocols"], capture_output=True, text=True, check=True)
    result = []
    for line in out.stdout.splitlines():
        names = [n for n in line.split(":") if n in TSHARK_NAMES]
        if "nbdgm" in names:  # SMB browser announcements ride on the datagram service
            result.append("netbios")
        else:
            result.append(TSHARK_NAMES[names[-1]] if names else "unknown")
    return result


def deliberate_difference(theirs, mine, by_port, by_signature):
    """Why necst may differ from tshark on a packet with payload, or None when it may not.

    by_port: the label from the ports alone; by_signature: from the payload alone.
    """
    if theirs == "unknown" and mine == by_port:
        return ("TCP segment inside a PDU tshark reassembles (or never completes), or a "
                "retransmission: tshark labels only the segment that completes a PDU")
    if theirs == "tls" and mine == by_port:
        return "last segment of a TLS record that began in an earlier segment (STARTTLS)"
    if theirs in ("unknown", "sip") and mine == by_signature != "unknown":
        return ("strong signature on a port tshark does not dissect (SSH banner or NICK on "
                "8000, M-SEARCH to a high port, HTTP on the SIP port)")
    if theirs == "ftp-data" and mine == "unknown":
        return "passive FTP data channel: its port comes from the PASV reply (session state)"
    if theirs in ("http", "tls") and mine == "unknown" and by_port == "http":
        return ("TLS tunnelled after HTTP CONNECT on shared port 8080, mid-record: tshark "
                "follows the session, necst needs a signature on a shared port")
    return None


def test_labels_agree_with_tshark_on_real_captures(shared_data, tshark):
    agreed, differences = set(), {}
    for rel, count in ORACLE_FILES:
        path = shared_data / rel
        proto, sport, dport, payload, plen = packet_inputs(read_packets(path, count))
        mine = [APP_LABELS[c] for c in label_apps(proto, sport, dport, payload, plen)]
        by_port = [APP_LABELS[c] for c in label_apps(proto, sport, dport, payload, plen * 0)]
        none = np.full(len(proto), -1)
        by_sig = [APP_LABELS[c] for c in label_apps(proto, none, none, payload, plen)]
        theirs = tshark_labels(tshark, path, count)
        assert len(theirs) == len(mine), rel
        assert (plen > 0).any(), f"{rel}: no payload dissected"
        for i in np.flatnonzero(plen > 0):
            if mine[i] == theirs[i]:
                agreed.add(mine[i])
                continue
            why = deliberate_difference(theirs[i], mine[i], by_port[i], by_sig[i])
            assert why is not None, (
                f"{rel} frame {i + 1}: tshark {theirs[i]}, necst {mine[i]}, "
                f"ports {sport[i]}->{dport[i]}, payload {bytes(payload[i][:plen[i]])!r}")
            differences[why] = differences.get(why, 0) + 1
    # Each covered protocol present in these captures is confirmed on some packets.
    assert agreed >= {"http", "tls", "dns", "dhcp", "ntp", "mdns", "ssdp", "imap", "smtp", "pop",
                      "ssh", "telnet", "ftp", "quic", "llmnr", "netbios", "smb"}
    assert differences  # the list above is exercised, not dead code


# --- Scapy layers -----------------------------------------------------------------------

def test_layers_bind_to_their_ports_and_craft():
    from scapy.all import IP, TCP as STCP, UDP as SUDP

    from necst.process.apps import FTP, IMAP, IRC, POP, SIP, SMTP, SSH, FTPData, Telnet

    for layer, port in ((IRC, 6667), (IRC, 194), (IRC, 6660), (IMAP, 143), (SMTP, 25),
                        (SMTP, 587), (POP, 110), (SIP, 5060), (SSH, 22), (Telnet, 23),
                        (FTP, 21), (FTPData, 20)):
        for ports in ({"sport": port, "dport": 40000}, {"sport": 40000, "dport": port}):
            pkt = IP(bytes(IP() / STCP(**ports) / b"NOOP\r\n"))
            assert isinstance(pkt[STCP].payload, layer), (layer, ports)
    sip = IP(bytes(IP() / SUDP(sport=40000, dport=5060) / b"OPTIONS sip:a@b SIP/2.0\r\n\r\n"))
    assert sip[SIP].method == b"OPTIONS"
    crafted = IP() / STCP(sport=40000) / SMTP(verb=b"EHLO", arguments=b"client.example")
    assert crafted[STCP].dport == 25
    assert bytes(crafted[SMTP]) == b"EHLO client.example\r\n"
    assert bytes(FTP(code=230, text=b"Login successful.")) == b"230 Login successful.\r\n"
    assert bytes(FTP(code=211, more=1, text=b"Features:")) == b"211-Features:\r\n"
    assert bytes(POP(status=b"+OK", text=b"ready")) == b"+OK ready\r\n"
    assert bytes(IMAP(tag=b"a1", verb=b"LOGIN", arguments=b"u p")) == b"a1 LOGIN u p\r\n"
    assert bytes(IRC(prefix=b"srv", verb=b"PING", params=b":x")) == b":srv PING :x\r\n"
    assert bytes(SSH(software=b"necst_1.0")) == b"SSH-2.0-necst_1.0\r\n"
    assert bytes(SIP(method=b"BYE", uri=b"sip:b@c", headers=b"Call-ID: 1")) == (
        b"BYE sip:b@c SIP/2.0\r\nCall-ID: 1\r\n\r\n")


def test_smtp_on_real_packets(shared_data):
    from necst.process.apps import SMTP

    pkts = read_packets(shared_data / "corpus/chrissanders/mail_sender_client_1.pcapng", 8)
    banner, ehlo, mail = pkts[3][SMTP], pkts[4][SMTP], pkts[7][SMTP]  # frames 4, 5, 8
    # tshark: smtp.response.code 220, smtp.rsp.parameter "mail01 ESMTP Postfix (Ubuntu)"
    assert banner.code == 220 and banner.text == b"mail01 ESMTP Postfix (Ubuntu)"
    assert banner.is_reply and not ehlo.is_reply
    # tshark: smtp.req.command EHLO / MAIL, smtp.req.parameter
    assert (ehlo.verb, ehlo.arguments) == (b"EHLO", b"[172.16.16.225]")
    assert (mail.verb, mail.arguments) == (b"MAIL", b"FROM:<sanders@skynet.local> SIZE=556")


def test_ftp_and_ftp_data_on_real_packets(shared_data):
    from necst.process.apps import FTP, FTPData

    pkts = read_packets(shared_data / "apps/ndpi/ftp.pcap", 43)
    # tshark: ftp.response.code 220 "(vsFTPd 3.0.3)"; ftp.request.command USER / PASS
    assert (pkts[3][FTP].code, pkts[3][FTP].text) == (220, b"(vsFTPd 3.0.3)")
    assert (pkts[5][FTP].verb, pkts[5][FTP].arguments) == (b"USER", b"anonymous")
    assert (pkts[9][FTP].verb, pkts[9][FTP].arguments) == (b"PASS", b"NcFTP@")
    assert pkts[18][FTP].code == 211 and pkts[18][FTP].more == 1  # "211-Features:"
    # Frame 43 is passive-mode data (tshark ftp-data, ports 25685 -> 50695, 1205 bytes).
    data = tcp_payload(pkts[42])
    assert len(data) == 1205 and data.startswith(b"-rw-r--r--")
    assert FTPData(data).data == data


def test_pop_and_imap_on_real_packets(shared_data):
    from necst.process.apps import IMAP, POP

    pop = read_packets(shared_data / "apps/ndpi/pop3.pcap", 6)
    # tshark: pop.response.indicator +OK, pop.response.description; pop.request.command user
    assert (pop[3][POP].status, pop[3][POP].text) == (b"+OK", b"POP server ready H migmxus005")
    assert (pop[5][POP].verb, pop[5][POP].arguments) == (b"user", b"cicciopernacchio@mail.com")
    imap = read_packets(shared_data / "apps/ndpi/imap-starttls.pcap", 10)
    greeting = imap[3][IMAP]  # tshark: "Response: * OK [CAPABILITY IMAP4rev1 ..."
    assert (greeting.tag, greeting.verb) == (b"*", b"OK")
    assert greeting.arguments.startswith(b"[CAPABILITY IMAP4rev1 CHILDREN")
    # tshark: imap.request_tag ".", imap.request.command CAPABILITY / STARTTLS
    assert (imap[5][IMAP].tag, imap[5][IMAP].verb) == (b".", b"CAPABILITY")
    assert (imap[9][IMAP].tag, imap[9][IMAP].verb) == (b".", b"STARTTLS")


def test_irc_on_real_packets(shared_data):
    from necst.process.apps import IRC

    # The server listens on 8000, so the layer is applied by hand; tshark decodes the same
    # frames with "-d tcp.port==8000,irc".
    pkts = read_packets(shared_data / "apps/ndpi/irc.pcap", 7)
    user, nick, notice = (IRC(tcp_payload(pkts[i])) for i in (3, 5, 6))
    # tshark: irc.request.command USER / NICK; irc.response.prefix, irc.response.command
    assert (user.verb, user.params) == (b"USER", b"xxxxx +iw xxxxx :Xxxxxx Xxxx")
    assert (nick.verb, nick.params) == (b"NICK", b"molochtest")
    assert (notice.prefix, notice.verb) == (b"card.freenode.net", b"NOTICE")
    assert notice.trailing == b"*** Looking up your hostname..."


def test_ssh_on_real_packets(shared_data):
    from necst.process.apps import SSH, SSHBinaryPacket, SSHEncrypted

    pkts = read_packets(shared_data / "apps/ndpi/ssh.pcap", 20)
    # tshark: "Server: Protocol (SSH-2.0-OpenSSH_5.3)", "Client: Protocol (SSH-2.0-OpenSSH_5.6)"
    server, client = pkts[3][SSH], pkts[5][SSH]
    assert (server.protocol, server.software) == (b"2.0", b"OpenSSH_5.3")
    assert client.banner == b"SSH-2.0-OpenSSH_5.6"
    # Frame 8: tshark ssh.packet_length 900, ssh.padding_length 4, ssh.message_code 20
    kex = pkts[7][SSHBinaryPacket]
    assert (kex.packet_length, kex.padding_length, kex.message_code) == (900, 4, 20)
    # Frame 20: tshark "Client: Encrypted packet (len=48)"
    assert len(pkts[19][SSHEncrypted].data) == 48
    other = read_packets(shared_data / "attacks/bruteforce/ssh-normal-counterpart.pcap", 6)
    # tshark: "Client: Protocol (SSH-2.0-OpenSSH_7.4p1 Debian-10)"
    banner = other[3][SSH]
    assert (banner.software, banner.software_comments) == (b"OpenSSH_7.4p1", b"Debian-10")


def test_telnet_on_real_packets(shared_data):
    from scapy.all import TCP as STCP

    from necst.process.apps import Telnet, TelnetCommand

    pkts = read_packets(shared_data / "apps/ndpi/telnet.pcap", 5)

    def commands(pkt):
        layer, out = pkt[STCP].payload, []
        while isinstance(layer, Telnet):
            if isinstance(layer, TelnetCommand):
                out.append((layer.code, layer.option))
            layer = layer.payload
        return out

    # tshark telnet.cmd / telnet.subcmd for frames 4 and 5
    assert commands(pkts[3]) == list(zip([253, 251, 251, 251, 251, 251, 251, 253, 251],
                                         [3, 24, 31, 32, 33, 34, 39, 5, 35]))
    assert commands(pkts[4]) == [(253, 37)]


def test_sip_layer_read_back_by_tshark(tshark, tmp_path):
    """No capture in shared/data carries SIP, so tshark checks one that the layer writes."""
    from scapy.all import IP, UDP as SUDP, wrpcap

    from necst.process.apps import SIP

    message = (b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
               b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
               b"To: Bob <sip:bob@biloxi.example.com>\r\n"
               b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
               b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\nCSeq: 314159 INVITE\r\n"
               b"Content-Length: 4\r\n\r\nv=0\n")
    sip = SIP(message)
    assert (sip.method, sip.uri, sip.version) == (b"INVITE", b"sip:bob@biloxi.example.com",
                                                  b"SIP/2.0")
    assert sip.header("call-id") == b"a84b4c76e66710@pc33.atlanta.example.com"
    assert bytes(sip) == message and bytes(sip.payload) == b"v=0\n"
    reply = SIP(b"SIP/2.0 180 Ringing\r\nCSeq: 314159 INVITE\r\n\r\n")
    assert (reply.status_code, reply.reason, reply.method) == (180, b"Ringing", b"")
    path = tmp_path / "sip.pcap"
    wrpcap(str(path), [IP(src="10.0.0.1", dst="10.0.0.2") / SUDP(sport=5060) / sip])
    out = subprocess.run([tshark, "-r", str(path), "-T", "fields", "-e", "sip.Method",
                          "-e", "sip.r-uri", "-e", "sip.Call-ID"], capture_output=True, text=True)
    assert out.stdout.strip().split("\t") == [
        "INVITE", "sip:bob@biloxi.example.com", "a84b4c76e66710@pc33.atlanta.example.com"]


EDGE_INPUTS = [b"", b"\r\n", b"\n", b"\xff", b"\xff\xff", b"\xff\xfa", b"\xff\xfa\x18",
               b"SSH-", b"SSH-\r\n", b"SSH-2.0", b"220", b"220-", b"999 x", b":", b": \r\n",
               b"SIP/2.0", b"SIP/2.0 abc\r\n\r\n", b"INVITE\r\n\r\n", b"* ", b"+", b"+OK",
               b"\x00\x00\x00\x0c\x04\x14" + bytes(10), b"\x00" * 40, bytes(range(256))]


def test_layers_never_raise_on_arbitrary_bytes():
    from scapy.all import IP, TCP as STCP, UDP as SUDP, raw

    from necst.process.apps import LAYER_NAMES, register_layers

    layers = register_layers()
    assert set(layers) == set(LAYER_NAMES)
    rng = np.random.default_rng(3)
    blobs = EDGE_INPUTS + [rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8)
                           .tobytes() for _ in range(150)]
    blobs += [prefix + blob for prefix in (b"\xff\xfb", b"SSH-2.0-", b"USER ", b":a ")
              for blob in blobs[-20:]]
    for blob in blobs:
        for name, layer in layers.items():
            pkt = layer(blob)
            assert not blob or raw(pkt) == blob, (name, blob)  # dissection keeps every byte
            repr(pkt)
        for port in (20, 21, 22, 23, 25, 110, 143, 194, 5060, 6667):
            for transport in (STCP, SUDP):
                pkt = IP(bytes(IP() / transport(sport=40000, dport=port) / blob))
                assert raw(pkt[transport].payload)[:len(blob)] == blob
                repr(pkt)
