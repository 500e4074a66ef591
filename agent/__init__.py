"""dock-agent: captures container barcodes at a mail dock, stores them durably, syncs them to headquarters."""

__version__ = "0.1.0"
