"""Every packet of every capture in ../shared/data, field by field, against tshark.

Target: 100 % agreement on every field of every packet both decode. Each remaining difference
must fall into one of the DELIBERATE classes below, each with its reason; anything else fails.
Fields that only one side decodes are listed too: where only necst decodes a field, that must
also be a documented class (a value tshark does not show could be garbage).
"""
from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest

from necst.capture.reader import CaptureReader
from necst.errors import NecstError
from necst.process.decode import decode
from necst.schema import PACKET_SCHEMA
from tshark_oracle import Comparison, capinfos_count, compare, have_wireshark_tools, tshark_rows

FOLDERS = ("benign", "apps", "attacks", "corpus")
GROUP = 200  # captures per mergecap / tshark run

# Captures whose records carry a timestamp fraction beyond one second (10^6 µs or 10^9 ns):
# necst carries the excess into the seconds (the arithmetic value); tshark prints the fraction
# unnormalised or wraps it.
INVALID_FRACTION_FILES = {
    "corpus/tcpdump/timestamp_invalid_micro.pcap",
    "corpus/tcpdump/timestamp_invalid_nano.pcap",
    "apps/ndpi/fuzz-2021-06-07-c6c72a0a56.pcap",
}


def _disagreement_reason(field: str, file: str, ours, theirs, protocols: str) -> str | None:
    if field == "ts_ns" and file in INVALID_FRACTION_FILES:
        return "timestamp fraction out of range: necst normalises it, tshark does not"
    if field == "ts_ns" and theirs == 0 and file.endswith(".pcapng"):
        return ("simple packet block: it has no timestamp; mergecap writes 0, necst gives it the "
                "previous packet's time so that time never runs backwards")
    if field == "wire_len" and theirs == 2**31 - 1 and ours > theirs:
        return "absurd wire length: tshark clamps it to 2^31-1, necst keeps the header's value"
    return None


def _only_ours_reason(field: str, file: str, value, protocols: str) -> str | None:
    if field == "ip_proto":
        return ("IPv6 with extension headers: tshark has no single field for the upper-layer "
                "protocol (checked by test_ipv6_extension_headers instead)")
    if file == "corpus/zeek/trunc__ipv4-internally-truncated-header.pcap" and field == "dst_ip":
        return ("IPv4 options cut by the snap length: tshark stops after the source address, "
                "the destination address is captured and necst reports it")
    if file == "corpus/zeek/ipv6-mobility-dst-opts.pcap" and field in ("src_port", "dst_port"):
        return ("malformed option inside an IPv6 destination-options header: tshark stops there, "
                "necst skips the header by its length field and reads the UDP header behind it")
    return None


def _capture_files(root: Path) -> list[Path]:
    rows = csv.DictReader(open(root / "MANIFEST.tsv"), delimiter="\t")
    return [root / r["path"] for r in rows
            if r["fmt"].startswith("pcap") and r["path"].split("/")[0] in FOLDERS]


def _ours(path: Path):
    batches = [decode(b) for b in CaptureReader(path)]
    return pa.Table.from_batches(batches, schema=PACKET_SCHEMA).to_pandas()


@pytest.fixture(scope="module")
def comparison(shared_data, tshark):
    if not have_wireshark_tools():
        pytest.skip("mergecap / capinfos not installed (Debian package tshark brings them)")
    files = _capture_files(shared_data)
    counts = {}
    for f in files:
        n, complete = capinfos_count(f)
        if n and complete:  # files cut short are counted by test_packet_counts_match_capinfos
            counts[f] = n
    accepted = list(counts)
    cmp = Comparison()
    packets = 0
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(0, len(accepted), GROUP):
            group = accepted[k : k + GROUP]
            theirs = tshark_rows(tshark, group, Path(tmp))
            pos = 0
            for f in group:
                n = counts[f]
                ours = _ours(f)
                assert len(ours) == n, f"{f}: necst reads {len(ours)} packets, capinfos {n}"
                name = str(f.relative_to(shared_data))
                compare(name, ours, theirs.iloc[pos : pos + n].reset_index(drop=True), cmp)
                pos += n
                packets += n
            assert pos == len(theirs)
    cmp.files = len(accepted)
    cmp.packets = packets
    return cmp


def test_every_field_agrees_or_is_a_documented_difference(comparison):
    unexplained = []
    explained = {}
    for field, rows in comparison.disagree.items():
        for file, i, ours, theirs, protocols in rows:
            reason = _disagreement_reason(field, file, ours, theirs, protocols)
            if reason is None:
                unexplained.append((field, file, i, ours, theirs, protocols))
            else:
                explained[(field, reason)] = explained.get((field, reason), 0) + 1
    print(f"\n{comparison.files} captures, {comparison.packets} packets compared with tshark")
    for field, n in comparison.agree.items():
        print(f"  {field:12s} agree {n:8d}  differ {len(comparison.disagree.get(field, [])):3d}  "
              f"only necst {len(comparison.only_ours.get(field, [])):5d}  "
              f"only tshark {len(comparison.only_tshark.get(field, [])):5d}")
    for (field, reason), n in sorted(explained.items()):
        print(f"  deliberate: {field}: {n} packets: {reason}")
    assert not unexplained, f"{len(unexplained)} unexplained differences, first: {unexplained[:10]}"
    assert comparison.packets > 500_000


def test_fields_only_necst_decodes_are_documented(comparison):
    unexplained = [(field, *row) for field, rows in comparison.only_ours.items() for row in rows
                   if _only_ours_reason(field, row[0], row[2], row[3]) is None]
    assert not unexplained, f"{len(unexplained)} values tshark does not show, first: {unexplained[:10]}"


def test_fields_only_tshark_decodes_are_tunnels_or_unsupported_layers(comparison):
    # necst decodes the outer headers; tshark also dissects inside tunnels (GRE, VXLAN, ERSPAN,
    # IP-in-IP, AH): those inner fields are the only ones tshark may have alone.
    tunnel_words = ("gre", "vxlan", "erspan", ":ip:ip", ":ipv6:ip:", ":ip:ipv6", ":ah:", "ipv6:ipv6", "gtp",
                    "geneve", "ayiya", "teredo")
    missing = [(field, *row) for field, rows in comparison.only_tshark.items() for row in rows
               if not any(w in row[3] for w in tunnel_words)]
    assert not missing, f"{len(missing)} fields tshark decodes outside tunnels and necst misses: {missing[:10]}"


def test_ipv6_extension_headers(shared_data, tshark):
    import subprocess
    path = shared_data / "corpus/libpcap/filter__ipv6_ext_headers.pcap"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    ours = _ours(path)
    out = subprocess.run([tshark, "-n", "-r", str(path), "-T", "fields", "-e", "frame.protocols"],
                         capture_output=True, text=True, check=True).stdout.split()
    names = {6: "tcp", 17: "udp", 58: "icmpv6"}
    checked = 0
    for proto, layers in zip(ours["ip_proto"], out):
        if proto in names:
            assert names[int(proto)] in layers.split(":")
            checked += 1
    assert checked == len(out)


def test_packet_counts_match_capinfos_or_both_refuse(shared_data, tshark):
    """Every capture: necst reads exactly the packets Wireshark's reader gets (before its error, for
    files cut short), or refuses the file with one line where Wireshark refuses it too. The only
    exception: valid files whose link type tshark does not know; necst keeps their records."""
    mismatched, kept, refused = [], [], 0
    unknown_linktype = {"filter__brcm-tag.pcap", "filter__dsa.pcap", "brcm-tag.pcap", "edsa.pcap"}
    for f in _capture_files(shared_data):
        n, _complete = capinfos_count(f)
        try:
            ours = sum(len(b) for b in CaptureReader(f))
        except NecstError as e:
            assert "\n" not in str(e) and str(f) in str(e)
            if n is not None:
                mismatched.append((f.name, "refused", n, str(e)))
            refused += 1
            continue
        if n is None:
            kept.append(f.name)
        elif ours != n:
            mismatched.append((f.name, ours, n))
    assert not mismatched, mismatched
    assert set(kept) <= unknown_linktype, kept
    assert refused > 0, "expected some corpus files that both readers refuse"
