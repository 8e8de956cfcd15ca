"""Reading captures (pcap, pcapng, gzip) into raw packet batches, and writing pcap / pcapng."""
from necst.capture.batch import RawBatch
from necst.capture.reader import CaptureReader, read_batches
from necst.capture.writer import CaptureWriter, write_capture

__all__ = ["RawBatch", "CaptureReader", "read_batches", "CaptureWriter", "write_capture"]
