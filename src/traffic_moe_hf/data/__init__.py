"""Captures → leakage-safe Hugging Face datasets (``traffic-moe prepare``; see ``docs/data.md``).

Light on purpose: importing ``traffic_moe_hf`` or this package imports neither dpkt nor datasets.
The names below are loaded on first use from their modules:

* :mod:`.reader`    – ``open_capture`` / ``iter_records`` (pcap, pcapng, gzip), ``CaptureError``
* :mod:`.decode`    – ``decode`` (link layer → IP → TCP/UDP), ``parse_ip`` (re-parse a stored packet)
* :mod:`.anonymize` – ``anonymize`` (field by field, documented there)
* :mod:`.flows`     – ``FlowTable``, ``bursts``
* :mod:`.samples`   – ``process_file``, ``encode_packets``, ``write_pcap``
* :mod:`.labels`, :mod:`.splits`, :mod:`.prepare` (``prepare()`` and the CLI)
"""

from importlib import import_module

_LAZY = {
    "CaptureError": "reader", "open_capture": "reader", "iter_records": "reader",
    "decode": "decode", "parse_ip": "decode", "Decoded": "decode",
    "anonymize": "anonymize", "FlowTable": "flows", "bursts": "flows",
    "process_file": "samples", "encode_packets": "samples", "write_pcap": "samples",
    "PrepareConfig": "samples", "CsvLabels": "labels", "assign_splits": "splits",
    "dedup_across_splits": "splits", "prepare": "prepare",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{mod}"), name)
