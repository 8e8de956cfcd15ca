"""Reading captures (pcap, pcapng, gzip) into raw packet batches, and writing pcap."""
from necst.capture.batch import RawBatch
from necst.capture.reader import CaptureReader, read_batches

__all__ = ["RawBatch", "CaptureReader", "read_batches"]
