"""Byte-level traffic tokenizer: one token per byte, plus a packet-boundary token.

A *flow* is a list of packets (``bytes``); a *sample* is one flow (a single packet is a flow of one
packet). The encoding of a flow is::

    [CLS] [PKT] b0 b1 ... b(M-1) [PKT] b0 b1 ... [PKT] ...

with at most ``max_packets`` packets and at most ``max_packet_bytes`` bytes of each. Besides
``input_ids`` and ``attention_mask`` the tokenizer returns the traffic structure the model embeds:

* ``packet_ids``: 0 for ``[CLS]``, ``i + 1`` for every token of the i-th packet (its ``[PKT]`` too);
* ``direction_ids``: 0 for ``[CLS]``/padding, 1 for a packet sent by the flow's initiator, 2 for a
  packet sent by the responder.

**Header layout.** With ``header_layout="compact"`` (the default) a packet's bytes reach the model
without the header fields that anonymisation masks (see ``data/anonymize.py``): IPv4 identification,
checksum, addresses and options; IPv6 flow label (with the low traffic-class nibble that shares its
bytes), addresses and extension-header contents; TCP ports, sequence
and acknowledgement numbers, checksum and the values of timestamp/SACK/signature/MPTCP options; UDP
ports and checksum. Those bytes are zeros in anonymised data, so dropping them loses nothing and
leaves room for payload: an IPv4/TCP packet with timestamps has 52 header bytes, of which 18 stay,
so 64 tokens hold 46 payload bytes instead of 12. Everything else (lengths, flags, window, TTL,
kept options, payload) is kept in packet order. ``"full"`` keeps the packet as it is. The packet is
first cut to ``capture_bytes`` (what ``traffic-moe prepare --max-bytes`` stores), then laid out, then
cut to ``max_packet_bytes``, so a full packet and its stored copy give the same tokens.

Vocabulary (fixed): ``[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4 [PKT]=5`` and byte ``b`` -> ``b + 6``.

The vocabulary, the special tokens, the hex-text path and the saved ``tokenizer.json`` are a
``tokenizers`` WordLevel model (tokens ``"00"`` .. ``"ff"``), so the folder loads with
``AutoTokenizer`` and hex text (``"4500003c..."``) goes through the Rust tokenizer. Raw ``bytes``
skip it on purpose: for binary input the id of byte ``b`` is ``b + 6``, a lookup per byte, whereas a
string tokenizer would first need every packet hex-encoded (twice the data, one Python string per
packet) only to split it again. Both paths give identical ids (tested).

This file is shipped as remote code in saved checkpoints: it imports only transformers, tokenizers,
torch and numpy (all installed with transformers).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers.tokenization_utils_base import BatchEncoding
from transformers.tokenization_utils_tokenizers import TokenizersBackend


SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[PKT]"]
BYTE_OFFSET = len(SPECIAL_TOKENS)  # id of byte b is b + BYTE_OFFSET
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID, PKT_ID = range(BYTE_OFFSET)
DIRECTION_NONE, DIRECTION_FORWARD, DIRECTION_BACKWARD = 0, 1, 2

# The value each per-token field is padded with.
PAD_VALUES = {
    "input_ids": PAD_ID,
    "attention_mask": 0,
    "packet_ids": 0,
    "direction_ids": DIRECTION_NONE,
    "token_type_ids": DIRECTION_NONE,  # the directions, for a BERT model (see __call__)
    "special_tokens_mask": 1,
    "labels": -100,
}


HEADER_LAYOUTS = ("compact", "full")
# TCP options whose value bytes anonymisation zeroes (timestamps, SACK blocks, MD5, MPTCP, TCP-AO)
_TCP_OPT_VALUE_DROPPED = frozenset((8, 5, 19, 29, 30))


def compact_ranges(packet: bytes) -> list[tuple[int, int]]:
    """Byte ranges ``[start, end)`` of an IP packet that the compact header layout keeps, in order.

    Drops the fields anonymisation masks (listed in the module docstring). A packet that is not
    IPv4/IPv6, or whose headers are cut short, keeps what can be laid out; nothing raises."""
    n = len(packet)
    if n == 0:
        return []
    version = packet[0] >> 4
    proto = None
    if version == 4:
        ihl = (packet[0] & 15) * 4
        if ihl < 20:
            return [(0, n)]
        ranges = [(0, 4), (6, 10)]  # version/IHL, TOS, total length | flags/fragment, TTL, protocol
        l4 = ihl
        if n > 9 and not ((packet[6] & 0x1F) or packet[7]):  # not a later fragment
            proto = packet[9]
    elif version == 6:
        # version + high traffic-class nibble | payload length, next header, hop limit (byte 1-3: the rest of
        # the traffic class, shared with the flow label, left out)
        ranges = [(0, 1), (4, 8)]
        l4 = 40
        proto = packet[6] if n > 6 else None
        while proto in (0, 43, 44, 51, 60) and l4 + 2 <= n:  # extension headers: keep next-header + length
            ranges.append((l4, l4 + 2))
            size = 8 if proto == 44 else (packet[l4 + 1] + 2) * 4 if proto == 51 else (packet[l4 + 1] + 1) * 8
            proto = packet[l4]
            l4 += size
        if proto in (0, 43, 44, 51, 60):
            proto = None
    else:
        return [(0, n)]
    start = l4
    if proto == 6 and n >= l4 + 13:
        doff = max((packet[l4 + 12] >> 4) * 4, 20)
        ranges += [(l4 + 12, l4 + 16), (l4 + 18, l4 + 20)]  # offset/flags, window | urgent pointer
        i, end = l4 + 20, min(l4 + doff, n)
        while i < end:
            kind = packet[i]
            if kind in (0, 1):  # end of list (the rest is padding) / no-op
                ranges.append((i, i + 1 if kind == 1 else end))
                i = i + 1 if kind == 1 else end
                continue
            ln = packet[i + 1] if i + 1 < end else 0
            if ln < 2 or i + ln > end:  # malformed or cut: keep the rest as it is
                ranges.append((i, end))
                break
            ranges.append((i, i + 2) if kind in _TCP_OPT_VALUE_DROPPED else (i, i + ln))
            i += ln
        start = l4 + doff
    elif proto == 17 and n >= l4 + 8:
        ranges.append((l4 + 4, l4 + 6))  # length
        start = l4 + 8
    ranges.append((start, n))
    merged: list[tuple[int, int]] = []
    for s, e in ranges:
        if e > n:
            e = n
        if e <= s:  # also every range starting past the end
            continue
        if merged and merged[-1][1] == s:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return merged


def _byte_vocab() -> dict[str, int]:
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"{b:02x}": b + BYTE_OFFSET for b in range(256)})
    return vocab




class TrafficTokenizer(TokenizersBackend):
    """Byte-level tokenizer for network traffic (flows of packets), backed by a `tokenizers` WordLevel model.

    Args:
        max_packets (`int`, defaults to 8): packets of a flow kept (the first ones).
        max_packet_bytes (`int`, defaults to 64): bytes of each packet kept (the first ones, after the layout).
        header_layout (`str`, defaults to `"compact"`): `"compact"` drops the header fields anonymisation
            masks (see the module docstring), `"full"` keeps the packet as it is. A saved folder without
            the setting predates header layouts, and its model read the full layout: it loads as `"full"`.
        capture_bytes (`int`, optional): bytes of each packet (from the IP header) kept before the layout:
            what `traffic-moe prepare --max-bytes` stores and `predict` keeps. Defaults to 128 for the
            compact layout and `max_packet_bytes` for the full one.
    """

    vocab_files_names = {"tokenizer_file": "tokenizer.json"}
    model_input_names = ["input_ids", "attention_mask", "packet_ids", "direction_ids"]
    padding_side = "right"

    def __init__(self, max_packets: int = 8, max_packet_bytes: int = 64, header_layout: str | None = None,
                 capture_bytes: int | None = None, **kwargs):
        saved = any(kwargs.get(k) is not None for k in ("vocab", "tokenizer_file", "tokenizer_object", "pad_token",
                                                        "model_max_length"))
        if header_layout is None and "name_or_path" in kwargs and not saved:
            # `from_pretrained` on a folder without tokenizer files (a model saved alone): the defaults would
            # tokenize otherwise than the model was trained, silently
            raise ValueError(f"{kwargs['name_or_path']}: no tokenizer saved here (tokenizer.json, tokenizer_config.json), "
                          "so the input settings the model was trained with (packets, bytes per packet, header "
                          "layout) are unknown; load the tokenizer of the folder it was trained in, or save that "
                          "tokenizer beside the model (tokenizer.save_pretrained)")
        # The vocabulary is fixed by design; a saved tokenizer.json holds the same one.
        for key in ("tokenizer_file", "tokenizer_object", "vocab", "merges"):
            kwargs.pop(key, None)
        tokenizer = Tokenizer(WordLevel(_byte_vocab(), unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase()])
        # Hex text: every pair of hex digits is a token; whitespace and ':' separate nothing.
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(r"[\s:]+"), behavior="removed"),
                pre_tokenizers.Split(Regex(r"[0-9a-f]{2}"), behavior="isolated"),
            ]
        )
        tokenizer.decoder = decoders.Fuse()
        self._tokenizer = tokenizer
        self.max_packets = int(max_packets)
        self.max_packet_bytes = int(max_packet_bytes)
        if header_layout is None:  # `from_pretrained` passes `name_or_path`; every folder saved since has the key
            header_layout = "full" if "name_or_path" in kwargs else "compact"
        if header_layout not in HEADER_LAYOUTS:
            raise ValueError(f"header_layout must be one of {HEADER_LAYOUTS}, not {header_layout!r}")
        self.header_layout = header_layout
        if capture_bytes is None:
            capture_bytes = 128 if header_layout == "compact" else self.max_packet_bytes
        self.capture_bytes = int(capture_bytes)
        if self.capture_bytes < 1 or self.max_packet_bytes < 1 or self.max_packets < 1:
            raise ValueError("max_packets, max_packet_bytes and capture_bytes must be positive")
        kwargs.setdefault("model_max_length", self.max_packets * (self.max_packet_bytes + 1) + 1)
        for name, token in (("pad", "[PAD]"), ("unk", "[UNK]"), ("cls", "[CLS]"), ("sep", "[SEP]"), ("mask", "[MASK]")):
            if str(kwargs.setdefault(f"{name}_token", token)) != token:
                raise ValueError(f"{name}_token is fixed to {token} in TrafficTokenizer")
        kwargs.pop("additional_special_tokens", None)
        kwargs["extra_special_tokens"] = ["[PKT]"]
        super().__init__(max_packets=self.max_packets, max_packet_bytes=self.max_packet_bytes,
                         header_layout=self.header_layout, capture_bytes=self.capture_bytes, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Also writes this file beside tokenizer.json with an `auto_map`, so the folder loads with
        `AutoTokenizer.from_pretrained(folder, trust_remote_code=True)` where the package is not installed."""
        self.init_kwargs["auto_map"] = {"AutoTokenizer": ["tokenization_traffic_moe.TrafficTokenizer", None]}
        files = super().save_pretrained(save_directory, *args, **kwargs)
        shutil.copyfile(Path(__file__).resolve(), Path(save_directory) / "tokenization_traffic_moe.py")
        return files

    def set_bert_inputs(self) -> "TrafficTokenizer":
        """Name the outputs for a BERT model (the dense baseline): the directions as ``token_type_ids``, no
        ``packet_ids``. Saved with the tokenizer, so the baseline's folder tokenizes for BERT as it is
        (``model(**tokenizer(...))``, ``pipeline``); without it BERT silently ignored ``direction_ids``."""
        self.model_input_names = ["input_ids", "attention_mask", "token_type_ids"]
        self.init_kwargs["model_input_names"] = list(self.model_input_names)
        return self

    # ------------------------------------------------------------------ vocabulary
    @property
    def packet_token_id(self) -> int:
        return PKT_ID

    @property
    def vocab_size(self) -> int:
        return BYTE_OFFSET + 256

    def __len__(self) -> int:
        return BYTE_OFFSET + 256

    # ------------------------------------------------------------------ encoding
    def layout(self, packet: bytes) -> bytes:
        """The bytes of one packet the model sees (before the ``max_packet_bytes`` cut)."""
        packet = bytes(packet[: self.capture_bytes])
        if self.header_layout == "full":
            return packet
        return b"".join(packet[s:e] for s, e in compact_ranges(packet))

    def token_byte_indices(self, packet: bytes, max_packet_bytes: int | None = None) -> list[int]:
        """Index in ``packet`` of the byte behind each of its byte tokens, in token order."""
        max_packet_bytes = self.max_packet_bytes if max_packet_bytes is None else max_packet_bytes
        packet = bytes(packet[: self.capture_bytes])
        ranges = [(0, len(packet))] if self.header_layout == "full" else compact_ranges(packet)
        return [i for s, e in ranges for i in range(s, e)][:max_packet_bytes]

    def _as_packet(self, packet) -> bytes:
        """One packet as bytes, from a bytes-like object or hex text (whitespace and ':' ignored)."""
        if isinstance(packet, (bytes, bytearray, memoryview)):
            return bytes(packet)
        if isinstance(packet, str):
            ids = self._tokenizer.encode(packet, add_special_tokens=False).ids
            if UNK_ID in ids or any(i < BYTE_OFFSET for i in ids):
                raise ValueError(f"not hex text: {packet[:40]!r}")
            return bytes(i - BYTE_OFFSET for i in ids)
        raise TypeError(f"a packet must be bytes or hex text, got {type(packet).__name__}")

    def _hex_flow(self, text: str) -> tuple[list[bytes], list[int] | None]:
        """One flow from hex text: one packet per line, optionally led by its direction, ``>`` (from the
        initiator) or ``<`` (to it). Returns the packets and their directions (None: no line marked)."""
        packets, directions = [], []
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            direction = {">": 0, "<": 1}.get(line[0])
            directions.append(direction)
            packets.append(self._as_packet(line if direction is None else line[1:]))
        if all(d is None for d in directions):
            return packets, None
        if any(d is None for d in directions):
            raise ValueError("hex text: mark every packet line with its direction ('>' or '<') or none")
        return packets, directions

    def _normalize_batch(self, flows) -> tuple[list[list[bytes]], bool, list | None]:
        """Returns (batch of flows, whether the input was a single sample, per flow the directions its hex
        text gave or None; None for the whole batch when no text gave any)."""
        if isinstance(flows, (bytes, bytearray, memoryview)):
            return [[bytes(flows)]], True, None
        if isinstance(flows, str):  # one sample of hex text, one packet per line
            packets, directions = self._hex_flow(flows)
            return [packets], True, None if directions is None else [directions]
        if not isinstance(flows, Sequence) or isinstance(flows, dict):
            raise TypeError(f"expected bytes, hex text, a flow (list of packets) or a batch of flows, got {type(flows).__name__}")
        if len(flows) == 0:
            return [], False, None
        first = flows[0]
        if isinstance(first, (bytes, bytearray, memoryview)):  # one flow: a list of packets
            return [[self._as_packet(p) for p in flows]], True, None
        if isinstance(first, str):  # a batch of hex-text samples
            parsed = [self._hex_flow(text) for text in flows]
            directions = [d for _p, d in parsed]
            if all(d is None for d in directions):
                directions = None
            else:  # unmarked samples of a marked batch: all packets from the initiator, as by default
                directions = [[0] * len(p) if d is None else d for p, d in parsed]
            return [p for p, _d in parsed], False, directions
        return [[self._as_packet(p) for p in flow] for flow in flows], False, None

    def encode_flow(
        self,
        packets: Sequence[bytes],
        directions: Sequence[int] | None = None,
        max_packets: int | None = None,
        max_packet_bytes: int | None = None,
        max_length: int | None = None,
    ) -> dict[str, list[int]]:
        """Encode one flow. ``directions[i]`` is 0 (initiator -> responder) or 1 (responder -> initiator)."""
        flat = self.encode_flat([packets], None if directions is None else [directions], max_packets, max_packet_bytes)
        return {key: value[0] for key, value in self._split_flat(flat, max_length).items()}

    @staticmethod
    def _split_flat(flat: dict, max_length: int | None = None) -> dict[str, list[list[int]]]:
        """:meth:`encode_flat`'s buffers as one list per flow and field, each flow cut to ``max_length``."""
        bounds = list(zip(flat["offsets"][:-1].tolist(), flat["offsets"][1:].tolist()))
        if max_length is not None:
            bounds = [(a, min(b, a + max_length)) for a, b in bounds]
        columns = {key: [flat[key][a:b].tolist() for a, b in bounds] for key in ("input_ids", "packet_ids", "direction_ids")}
        return {"input_ids": columns["input_ids"], "attention_mask": [[1] * (b - a) for a, b in bounds],
                "packet_ids": columns["packet_ids"], "direction_ids": columns["direction_ids"]}

    def encode_flat(
        self,
        flows: Sequence[Sequence[bytes]],
        directions: Sequence[Sequence[int]] | None = None,
        max_packets: int | None = None,
        max_packet_bytes: int | None = None,
    ) -> dict:
        """A batch of flows encoded (the one encoding: :meth:`encode_flow` and ``__call__`` read it), as flat
        numpy buffers: ``offsets`` (int64, one more than there are flows; flow i's tokens are
        ``offsets[i]:offsets[i + 1]``) and the concatenated ``input_ids`` (int32), ``packet_ids`` (int16) and
        ``direction_ids`` (int8); the attention mask is all ones. Python touches each packet once (its
        layout); the per-token work is a few array operations on the whole batch. ``prepare`` builds its
        Arrow columns from these buffers (list-of-int columns cost a Python object per token there).
        numpy, not torch: ``prepare`` calls this in forked worker processes, where torch's thread pool,
        started in the parent, can deadlock."""
        import numpy as np  # a dependency of transformers

        max_packets = self.max_packets if max_packets is None else max_packets
        max_packet_bytes = self.max_packet_bytes if max_packet_bytes is None else max_packet_bytes
        layout = self.layout
        payloads: list[bytes] = []  # per unit: the [CLS] of a flow (no bytes) or one packet's bytes
        unit_packet: list[int] = []
        unit_direction: list[int] = []
        flow_units: list[int] = []
        for i, flow in enumerate(flows):
            packets = flow[:max_packets]
            payloads.append(b"")
            payloads.extend([layout(p)[:max_packet_bytes] for p in packets])
            unit_packet.extend(range(len(packets) + 1))
            unit_direction.append(DIRECTION_NONE)
            flow_directions = None if directions is None else directions[i]
            if flow_directions is None:
                unit_direction.extend([DIRECTION_FORWARD] * len(packets))
            else:
                if len(flow_directions) < len(packets):
                    raise ValueError(f"{len(flow_directions)} directions for {len(flow)} packets")
                unit_direction.extend([DIRECTION_FORWARD + int(d) for d in flow_directions[: len(packets)]])
            flow_units.append(len(packets) + 1)
        unit_packet_a = np.array(unit_packet, dtype=np.int16)
        unit_direction_a = np.array(unit_direction, dtype=np.int64)
        bad = (unit_packet_a > 0) & (unit_direction_a != DIRECTION_FORWARD) & (unit_direction_a != DIRECTION_BACKWARD)
        if bad.any():
            raise ValueError(f"direction must be 0 or 1, got {int(unit_direction_a[bad][0]) - DIRECTION_FORWARD}")
        unit_len = np.fromiter(map(len, payloads), dtype=np.int64, count=len(payloads)) + 1
        unit_end = np.cumsum(unit_len)
        starts = unit_end - unit_len
        total = int(unit_end[-1]) if len(payloads) else 0
        input_ids = np.empty(total, dtype=np.int32)
        is_byte = np.ones(total, dtype=bool)
        is_byte[starts] = False
        input_ids[is_byte] = np.frombuffer(b"".join(payloads), dtype=np.uint8).astype(np.int32) + BYTE_OFFSET
        input_ids[starts] = np.where(unit_packet_a == 0, CLS_ID, PKT_ID)
        offsets = np.zeros(len(flow_units) + 1, dtype=np.int64)
        if flow_units:
            offsets[1:] = unit_end[np.cumsum(flow_units) - 1]
        return {
            "offsets": offsets,
            "input_ids": input_ids,
            "packet_ids": np.repeat(unit_packet_a, unit_len),
            "direction_ids": np.repeat(unit_direction_a.astype(np.int8), unit_len),
        }

    def __call__(
        self,
        flows=None,
        directions=None,
        *,
        text=None,
        max_packets: int | None = None,
        max_packet_bytes: int | None = None,
        max_length: int | None = None,
        truncation: bool | None = None,
        padding: bool | str = False,
        pad_to_multiple_of: int | None = None,
        return_tensors: str | None = None,
        return_special_tokens_mask: bool = False,
        return_attention_mask: bool = True,
        **kwargs,
    ) -> BatchEncoding:
        """Tokenize flows.

        ``flows`` (or ``text=``, transformers' name) is one sample (``bytes`` = one packet, a list of ``bytes``
        = one flow, hex text with one packet per line) or a batch (a list of flows, or a list of hex texts).
        ``directions`` mirrors it (per packet 0 = initiator -> responder, 1 = responder -> initiator);
        hex text can carry them itself, a line starting with ``>`` or ``<`` (what a ``pipeline`` needs: it
        passes text only); default: all 0. A flow's verdict can depend on its directions: give them.
        A tokenizer saved for a BERT model (``model_input_names`` with ``token_type_ids``) returns the
        directions as ``token_type_ids`` and no ``packet_ids``.
        ``max_length`` (with ``truncation``, or alone) cuts the whole flow; ``padding`` is ``False``,
        ``True``/``"longest"`` or ``"max_length"``.
        """
        if kwargs:
            raise TypeError(f"TrafficTokenizer got unsupported arguments: {sorted(kwargs)}")
        if flows is None:
            flows = text
        elif text is not None:
            raise TypeError("give the flows once: positionally or as text=")
        if flows is None:
            raise TypeError("TrafficTokenizer needs flows (bytes, hex text, lists of packets)")
        batch, single, text_directions = self._normalize_batch(flows)
        if directions is None:
            directions = text_directions  # per flow, from hex text's direction marks (or None)
        elif single:
            directions = [directions]
        if directions is not None and len(directions) != len(batch):
            raise ValueError(f"{len(directions)} direction lists for {len(batch)} flows")
        if truncation is False:
            max_length_cut = None
        else:
            max_length_cut = max_length
        flat = self.encode_flat(batch, directions, max_packets, max_packet_bytes)
        if (batch and padding in (True, "longest") and return_tensors == "pt" and max_length_cut is None
                and return_attention_mask and not return_special_tokens_mask):
            return BatchEncoding(self._model_names(self._padded_tensors(flat, pad_to_multiple_of)))
        columns = self._split_flat(flat, max_length_cut)
        if return_special_tokens_mask:
            columns["special_tokens_mask"] = [[int(t < BYTE_OFFSET) for t in ids] for ids in columns["input_ids"]]
        if not return_attention_mask:
            del columns["attention_mask"]
        columns = self._model_names(columns)
        if not batch:
            columns = {key: [] for key in self.model_input_names}
        if padding or return_tensors is not None:
            if padding is False and return_tensors is not None and len({len(x) for x in columns["input_ids"]}) > 1:
                raise ValueError("flows of different lengths cannot become one tensor without padding=True")
            return self.pad(
                columns,
                padding=padding if padding else "longest",
                max_length=max_length,
                pad_to_multiple_of=pad_to_multiple_of,
                return_tensors=return_tensors,
                single=single,
            )
        if single:
            columns = {key: value[0] for key, value in columns.items()}
        return BatchEncoding(columns)

    def _model_names(self, columns: dict) -> dict:
        """A BERT model's names (``set_bert_inputs``): the directions as ``token_type_ids``, no ``packet_ids``."""
        if "token_type_ids" in self.model_input_names:
            columns["token_type_ids"] = columns.pop("direction_ids")
            if "packet_ids" not in self.model_input_names:
                del columns["packet_ids"]
        return columns

    @staticmethod
    def _padded_tensors(flat: dict, pad_to_multiple_of: int | None) -> dict[str, torch.Tensor]:
        """``__call__(..., padding=True, return_tensors="pt")``: the padded tensors filled from :meth:`encode_flat`'s
        buffers in one scatter each, not from per-token Python lists (what ``predict`` calls for every batch).
        Same values and dtypes as padding the lists (tested)."""
        import numpy as np

        offsets = flat["offsets"]
        lengths = np.diff(offsets)
        target = int(lengths.max())
        if pad_to_multiple_of:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
        rows = np.repeat(np.arange(len(lengths)), lengths)
        cols = np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], lengths)

        def grid(values, key):
            out = np.full((len(lengths), target), PAD_VALUES[key], dtype=np.int64)
            out[rows, cols] = values
            return torch.from_numpy(out)

        return {"input_ids": grid(flat["input_ids"], "input_ids"), "attention_mask": grid(1, "attention_mask"),
                "packet_ids": grid(flat["packet_ids"], "packet_ids"), "direction_ids": grid(flat["direction_ids"], "direction_ids")}

    def pad(
        self,
        encoded_inputs,
        padding: bool | str = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        return_tensors: str | None = None,
        return_attention_mask: bool | None = None,
        single: bool = False,
        **kwargs,
    ) -> BatchEncoding:
        """Pad every per-token field (``input_ids``, ``attention_mask``, ``packet_ids``, ``direction_ids``,
        ``special_tokens_mask``, token ``labels``) on the right. Accepts a list of samples (what
        data collators pass) or a dict of columns. Other fields (e.g. a class ``label``) pass through."""
        if isinstance(encoded_inputs, (list, tuple)):
            if len(encoded_inputs) == 0:
                return BatchEncoding({}, tensor_type=return_tensors)
            keys = list(encoded_inputs[0].keys())
            columns = {key: [sample[key] for sample in encoded_inputs] for key in keys}
        else:
            columns = dict(encoded_inputs)
        lengths = [len(x) for x in columns["input_ids"]]
        if padding == "max_length":
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length")
            target = max_length
        elif padding in (True, "longest"):
            target = max(lengths) if lengths else 0
        elif padding in (False, "do_not_pad"):
            target = None
        else:
            raise ValueError(f"unknown padding strategy {padding!r}")
        if target is not None and pad_to_multiple_of:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
        if "attention_mask" not in columns and return_attention_mask is not False:
            columns["attention_mask"] = [[1] * n for n in lengths]
        out = {}
        for key, values in columns.items():
            per_token = key in PAD_VALUES and all(
                isinstance(v, (list, tuple, torch.Tensor)) and len(v) == n for v, n in zip(values, lengths)
            )
            if per_token and target is not None:
                pad_value = PAD_VALUES[key]
                values = [list(v.tolist() if isinstance(v, torch.Tensor) else v) + [pad_value] * (target - len(v)) for v in values]
            out[key] = values
        if single and return_tensors is None:  # one sample as tensors keeps its batch axis ([1, L]), as in transformers
            out = {key: value[0] for key, value in out.items()}
        return BatchEncoding(out, tensor_type=return_tensors)

    # ------------------------------------------------------------------ decoding
    def decode_flow(self, token_ids) -> list[bytes]:
        """The bytes an encoding holds, per packet (special tokens and padding dropped): the packets
        exactly with ``header_layout="full"``; with ``"compact"`` their laid-out bytes (the masked
        header fields are not in the encoding), which are not meant to be encoded again."""
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.tolist()
        packets: list[bytearray] = []
        for token in token_ids:
            if token == PKT_ID:
                packets.append(bytearray())
            elif token >= BYTE_OFFSET:
                if not packets:
                    packets.append(bytearray())
                packets[-1].append(token - BYTE_OFFSET)
        return [bytes(p) for p in packets]

    def decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str | list[str]:
        """Hex text of the bytes, one line per packet; other special tokens shown by name unless skipped.
        A batch (a list of sequences, or a 2-D tensor/array) gives a list of strings, as transformers' own
        ``decode`` does since 5.0 (``batch_decode`` calls it that way)."""
        if hasattr(token_ids, "tolist"):  # torch tensor, numpy array
            token_ids = token_ids.tolist()
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        first = token_ids[0] if len(token_ids) else None
        if isinstance(first, (list, tuple)) or getattr(first, "ndim", 0) > 0:  # a batch (numpy ints are one sequence)
            return [self.decode(seq, skip_special_tokens=skip_special_tokens, **kwargs) for seq in token_ids]
        lines: list[str] = []
        current: list[str] = []
        for token in token_ids:
            if token == PKT_ID:
                if current:
                    lines.append("".join(current))
                current = []
            elif token >= BYTE_OFFSET:
                current.append(f"{token - BYTE_OFFSET:02x}")
            elif token < 0:  # -100: a position that loss ignores (labels), not a token
                continue
            elif not skip_special_tokens:
                current.append(SPECIAL_TOKENS[token])
        if current:
            lines.append("".join(current))
        return "\n".join(lines)


__all__ = ["TrafficTokenizer"]
