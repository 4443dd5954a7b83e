"""``traffic-moe pretrain``: masked-packet modelling on unlabeled traffic with `Trainer`.

    traffic-moe pretrain --data DIR [DIR ...] --out CKPT [--config tiny|mini|small|base] [--dense]
                         [--splits train] [--epochs N | --max-steps N] [--resume]

The defaults are the recipe of the shipped checkpoints (versions 2 and 3): the ``mini`` preset, masked packets plus
the service term below, no contrastive views (version 3: ``--max-steps 1600`` on the corpus of
benchmarks/foundation/make_corpus.py, run as 400, 800, then 1600 steps with ``--resume``).

Byte masking follows BERT's 80/10/10 rule through `DataCollatorForLanguageModeling`; on top of it
the masked-packet objective hides whole byte spans inside a packet (a header field, a record length)
and, with a smaller probability, whole packets, so the model must infer them from the rest of the
flow. The router's load-balancing and z-losses are part of the loss; the expert load is logged.

Flow-contrastive term (``--contrastive W``, off by default): every flow is paired
with a *shaped* copy of itself — one black-box shaping transform of ``traffic_moe_hf.robustness``
(padding, segment splitting, chaff, size normalisation, header-field changes) at a random budget, the
traffic a real stack or an evasion tool would send — and both views, each masked as above, go through
the encoder; an NT-Xent loss (SimCLR) pulls the mean-pooled states of the two views together and
pushes other flows of the batch away. Masked-byte prediction alone teaches byte statistics; the
pooled flow vector the classifier reads is left untrained by it, and measured here it did not help
few-shot fine-tuning (tls9, 10 flows per class: 0.848 macro-F1 after 800 MLM-only steps vs 0.959 from
scratch, 0.983 with the contrastive term; ``tiny``, before the service term existed). Each step then encodes
2 x batch-size sequences. It is off by default since the service term measured better on real-world traffic
(below; version 1, masking + contrast, probed 0.542); contrast + service together from scratch is not measured.

Service term (``--service``, weight 1.0 by default; 0 turns it off): the responder's transport and port
(``tcp/443``, ``udp/53``) — which the model never reads: the compact layout drops ports and anonymisation
zeroes them — is predicted from the mean-pooled flow vector (through the transform the classifier applies to
it, :func:`classifier_input`) by a linear head that lives only during pretraining. The classes are the
(transport, port) pairs seen in at least ``SERVICE_MIN_FLOWS`` flows of at least ``SERVICE_MIN_FILES`` capture
files of the corpus; the other flows take no part in this term. A port is a free, noisy label of what a flow's
bytes say (the protocol), so the pooled vector learns to tell services apart from content. Measured on sv17's
validation split (10 flows per class, linear probe): masked packets + this term (``--contrastive 0``) 0.676
macro-F1 at 800 steps (version 2) and 0.719 at 1600 (version 3), where masked packets + flow contrast (version 1)
gave 0.542 and a random initialisation 0.496 (docs/results/foundation.md).

Only the splits named by ``--splits`` (default: ``train``) are read: test splits never leak into
pretraining.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import hashlib

import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling, TrainerCallback

from ..argtypes import HelpFormatter, at_least, non_negative, output_folder, positive, probability, steps_or_unset
from ..progress import honours_progress
from ..configuration_traffic_moe import PRESETS
from ..modeling_traffic_moe import TrafficMoeForMaskedLM, masked_mean
from ..tokenization_traffic_moe import BYTE_OFFSET, MASK_ID, PKT_ID
from ..errors import TrafficMoeError
from ..options import keyword_arguments, option


@dataclass
class MaskedPacketCollator(DataCollatorForLanguageModeling):
    """BERT byte masking (80/10/10) plus span masking inside packets and whole-packet masking.

    span_probability: chance that a byte starts a masked span (lengths 1..max_span, geometric, mean ~3),
    spans never cross a packet boundary; packet_probability: chance that all bytes of a packet are masked.
    Random replacements are always byte tokens, never structure tokens such as ``[PKT]``.
    """

    span_probability: float = 0.03
    max_span: int = 8
    packet_probability: float = 0.05
    mask_seed: int = 0
    epoch: int = 0

    def _generator_for(self, input_ids: torch.Tensor) -> torch.Generator:
        """The masks of a batch depend only on its content, the seed and the epoch, not on how many
        batches were drawn before: a resumed run masks exactly as the uninterrupted one (the Trainer's
        data loader collates one batch ahead, so a shared random stream would drift on resume)."""
        digest = hashlib.blake2b(input_ids.numpy().tobytes(), digest_size=8, key=f"{self.mask_seed}:{self.epoch}".encode())
        return torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") & ((1 << 63) - 1))

    def torch_mask_tokens(self, inputs, special_tokens_mask=None, offset_mapping=None):
        original = inputs.clone()
        generator = self._generator_for(original)
        self.generator = generator  # used by the parent's 80/10/10 byte masking
        inputs, labels = super().torch_mask_tokens(inputs, special_tokens_mask=special_tokens_mask)
        is_byte = original >= BYTE_OFFSET
        # the parent draws random replacements from the whole vocabulary: keep them bytes
        wrong = (labels != -100) & (inputs < BYTE_OFFSET) & (inputs != MASK_ID)
        inputs[wrong] = torch.randint(BYTE_OFFSET, BYTE_OFFSET + 256, (int(wrong.sum()),), generator=generator)

        # packet index of every token: running count of [PKT] markers
        packet_index = torch.cumsum(original == PKT_ID, dim=1)
        width = original.shape[1]
        extra = torch.zeros_like(is_byte)
        # spans: start at random bytes, geometric lengths (p=0.3, mean ~3) up to max_span, inside one packet
        starts = (torch.rand(original.shape, generator=generator) < self.span_probability) & is_byte
        uniform = torch.rand(original.shape, generator=generator).clamp(min=1e-12)
        lengths = (torch.log(uniform) / torch.log(torch.tensor(0.7))).floor().long().clamp(max=self.max_span - 1) + 1
        for offset in range(self.max_span):
            shifted = torch.zeros_like(starts)
            shifted[:, offset:] = starts[:, : width - offset] & (lengths[:, : width - offset] > offset)
            same_packet = torch.zeros_like(starts)
            same_packet[:, offset:] = packet_index[:, offset:] == packet_index[:, : width - offset]
            extra |= shifted & same_packet
        # whole packets
        num_packets = int(packet_index.max()) + 1
        chosen = torch.rand((original.shape[0], num_packets), generator=generator) < self.packet_probability
        extra |= torch.gather(chosen, 1, packet_index) & (packet_index > 0)
        extra &= is_byte & (labels == -100)

        labels[extra] = original[extra]
        decide = torch.rand(original.shape, generator=generator)
        to_mask = extra & (decide < self.mask_replace_prob)
        to_random = extra & (decide >= self.mask_replace_prob) & (decide < self.mask_replace_prob + self.random_replace_prob)
        inputs[to_mask] = MASK_ID
        inputs[to_random] = torch.randint(BYTE_OFFSET, BYTE_OFFSET + 256, (int(to_random.sum()),), generator=generator)
        return inputs, labels


#: the fields that decide the weights' shapes: a checkpoint that differs in one cannot be resumed
_SHAPE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "num_experts", "num_experts_per_tok", "moe_intermediate_size", "num_shared_experts", "vocab_size",
                 "max_position_embeddings", "type_vocab_size")


def check_resume_shape(config, checkpoint) -> None:
    """``--resume`` continues the run in OUT/checkpoints: a different ``--config`` / ``--dense`` / ``--match``
    than that run's is named here (it was a page of "size mismatch" lines from torch)."""
    saved = json.loads((Path(checkpoint) / "config.json").read_text())
    ours = config.to_dict()
    differ = [f"{k} {saved[k]} (checkpoint) vs {ours[k]} (now)" for k in _SHAPE_FIELDS
              if k in saved and k in ours and saved[k] != ours[k]]
    if differ:
        raise TrafficMoeError(f"--resume: {checkpoint} is another model than the one asked for: {'; '.join(differ)}. "
                         "Resume with the options of that run (--config, --dense, --match), or use another --out")


def check_resume_service(head, checkpoint) -> None:
    """``--resume`` with the service term as the run had it (on or off, the same classes): named here, where torch
    would fail on the optimizer's state or silently start a new head."""
    from safetensors import safe_open

    files = sorted(Path(checkpoint).glob("model*.safetensors"))
    if not files:
        return
    keys = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            keys.update({k: f.get_slice(k).get_shape() for k in f.keys() if k.startswith("service_head.")})
    saved = keys.get("service_head.weight", [0])[0]
    ours = 0 if head is None else head.out_features
    if saved != ours:
        said = lambda n: f"{n} service classes" if n else "no service term"  # noqa: E731
        raise TrafficMoeError(f"--resume: {checkpoint} was pretrained with {said(saved)}, this run has {said(ours)} "
                              "(--service and the corpus decide it); resume with that run's --service and data, or use "
                              "another --out")


def check_resume_contrastive(contrastive: float, checkpoint) -> None:
    """``--resume`` with the contrastive term on or off as the run had it (its log says: ``contrastive_loss``
    entries). Resuming a run of the old default (``--contrastive 1.0``) without naming it would otherwise train
    on, silently, with another recipe."""
    state = Path(checkpoint) / "trainer_state.json"
    history = json.loads(state.read_text()).get("log_history", []) if state.is_file() else []
    logged = [h for h in history if "loss" in h]
    if not logged:  # nothing logged yet: nothing says what the run had
        return
    had = any("contrastive_loss" in h for h in logged)
    if had != bool(contrastive):
        raise TrafficMoeError(
            f"--resume: {checkpoint} was pretrained {'with' if had else 'without'} the contrastive term, this run "
            f"{'has it' if contrastive else 'has not'} (--contrastive {contrastive:g}); resume with that run's "
            f"--contrastive ({'e.g. 1.0, the default before version 2' if had else '0, the default'}) or use another "
            "--out")


class _EpochCallback(TrainerCallback):
    """Tells the collator the epoch, so that each epoch masks the same flow differently."""

    def __init__(self, collator: MaskedPacketCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch or 0)


def add_parser(subparsers):
    p = subparsers.add_parser(
        "pretrain", help="masked-packet pretraining on prepared (unlabeled) traffic", description=__doc__,
        formatter_class=HelpFormatter,
    )
    # an option that is a PretrainOptions field (below) takes its default and help from there: one place for both
    o = partial(option, PretrainOptions)
    p.add_argument("--data", nargs="+", required=True, help="one or more directories written by `traffic-moe prepare`")
    p.add_argument("--out", type=output_folder, required=True,
                   help="output checkpoint folder (Hub layout); OUT/checkpoints holds the Trainer's checkpoints for "
                        "--resume (optimizer state, pickles): share OUT without it")
    p.add_argument("--config", choices=sorted(PRESETS), **o("config"))
    p.add_argument("--from", dest="init_from", **o("init_from"))
    p.add_argument("--dense", action="store_true", **o("dense"))
    p.add_argument("--match", choices=("active", "total"), **o("match"))
    p.add_argument("--splits", **o("splits", default=",".join(PretrainOptions.splits)))  # run() splits it at ","
    p.add_argument("--epochs", type=positive, **o("epochs"))
    p.add_argument("--max-steps", type=steps_or_unset, **o("max_steps"))
    p.add_argument("--batch-size", type=at_least(1), **o("batch_size"))
    p.add_argument("--lr", type=positive, **o("lr"))
    p.add_argument("--mlm-probability", type=probability, **o("mlm_probability"))
    p.add_argument("--span-probability", type=probability, **o("span_probability"))
    p.add_argument("--packet-probability", type=probability, **o("packet_probability"))
    p.add_argument("--contrastive", type=non_negative, **o("contrastive"))
    p.add_argument("--temperature", type=positive, **o("temperature"))
    p.add_argument("--view-copies", type=at_least(1), **o("view_copies"))
    p.add_argument("--view-budgets", choices=("list", "ranges"), **o("view_budgets"))
    p.add_argument("--service", type=non_negative, **o("service"))
    p.add_argument("--seed", type=int, **o("seed"))
    p.add_argument("--resume", action="store_true", **o("resume"))
    p.add_argument("--save-steps", type=at_least(1), **o("save_steps"))
    p.add_argument("--no-progress", dest="progress", action="store_false", **o("progress", help="no progress bars"))
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    result = pretrain(
        data=args.data, out=args.out, config=args.config, dense=args.dense, match=args.match,
        splits=args.splits.split(","), epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
        lr=args.lr, mlm_probability=args.mlm_probability, span_probability=args.span_probability,
        packet_probability=args.packet_probability, seed=args.seed, resume=args.resume,
        save_steps=args.save_steps, progress=args.progress, contrastive=args.contrastive,
        temperature=args.temperature, view_copies=args.view_copies, view_budgets=args.view_budgets,
        init_from=args.init_from, service=args.service,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank returns; rank 0's summary is the saved one
        print(json.dumps(result, indent=2))
    return 0


@dataclass
class PretrainOptions:
    """:func:`pretrain`'s keyword arguments (same names and defaults), for ``HfArgumentParser`` or a saved run; also
    the defaults and help of ``traffic-moe pretrain``'s options (:func:`add_parser`). A help text is an argparse
    string that names the command's flags and writes out no default (see :mod:`traffic_moe_hf.options`)."""

    config: str = field(default="mini", metadata={"help": "size preset: tiny, mini, small, base"})
    dense: bool = field(default=False, metadata={"help": "pretrain the dense BERT baseline instead (same tokenizer)"})
    match: str = field(default="active", metadata={"help": (
        "with --dense: match the MoE's active or total parameters")})
    splits: tuple[str, ...] = field(default=("train",), metadata={"help": (
        "splits to read, comma-separated on the command line (never test)")})
    epochs: float = field(default=3.0, metadata={"help": "passes over the pretraining corpus"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many steps (overrides --epochs; -1: unset)"})
    batch_size: int = field(default=32, metadata={"help": "flows per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (linear schedule, 6%% warm-up)"})
    mlm_probability: float = field(default=0.15, metadata={"help": "share of byte tokens masked (80/10/10 rule)"})
    span_probability: float = field(default=0.03, metadata={"help": (
        "share of tokens starting a masked span of bytes")})
    packet_probability: float = field(default=0.05, metadata={"help": "share of packets masked whole"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in OUT/checkpoints"})
    save_steps: int = field(default=200, metadata={"help": "steps between checkpoints (for --resume)"})
    progress: bool = field(default=True, metadata={"help": "progress bars (False: none, as --no-progress)"})
    config_overrides: dict | None = field(default=None, metadata={"help": (
        "model configuration fields to override, e.g. {\"num_experts\": 4} (no command-line option)")})
    contrastive: float = field(default=0.0, metadata={"help": (
        "weight of the flow-contrastive loss between a flow and its shaped copy (0: MLM only)")})
    temperature: float = field(default=0.1, metadata={"help": "NT-Xent temperature"})
    view_copies: int = field(default=1, metadata={"help": (
        "shaped views made per flow (each flow appears once per view)")})
    view_budgets: str = field(default="list", metadata={"help": (
        "shaping budgets of the views: the fixed list (list) or the ranges finetune --adversarial draws from "
        "(ranges)")})
    init_from: str | None = field(default=None, metadata={"help": (
        "continue from a pretrained checkpoint instead (a folder, or a shipped short name: traffic-moe-mini, "
        "bert-mini): domain-adaptive pretraining on your own traffic")})
    service: float = field(default=1.0, metadata={"help": (
        "weight of the service loss: the responder's transport/port, hidden from the input, predicted from the "
        "pooled flow (0: off)")})


def pretrain(data, out, options: PretrainOptions | None = None, **overrides) -> dict:
    """Library entry point of ``traffic-moe pretrain``; returns the run's summary. The options are the fields of
    :class:`PretrainOptions`: keyword arguments (``pretrain(data, out, max_steps=100)``), a ``PretrainOptions``,
    or both (the keywords override its fields; see :mod:`traffic_moe_hf.options`).

    ``init_from``: continue from a pretrained checkpoint (a folder or a shipped short name, e.g.
    ``traffic-moe-mini``) instead of a new model of ``config`` — domain-adaptive pretraining on one's own
    unlabelled traffic; the checkpoint decides MoE or dense."""
    return _pretrain(data, out, **keyword_arguments(PretrainOptions, options, overrides, "pretrain"))


@honours_progress
def _pretrain(data, out, *, config, dense, match, splits, epochs, max_steps, batch_size, lr, mlm_probability,
              span_probability, packet_probability, seed, resume, save_steps, progress, config_overrides, contrastive,
              temperature, view_copies, view_budgets, init_from, service) -> dict:
    """:func:`pretrain`'s body: its keyword-only parameters are :class:`PretrainOptions`' fields (the defaults are
    there only; :func:`pretrain` passes them all)."""
    from datasets import concatenate_datasets
    from transformers import BertForMaskedLM, Trainer, TrainingArguments, set_seed

    from .common import (data_tokenizer, dense_config, dense_positions, device_summary, load_prepared, model_view,
                         moe_config, parameter_summary, save_final_model)
    from .expert_load import ExpertLoadCallback

    if view_copies < 1:
        raise TrafficMoeError(f"--view-copies must be at least 1, not {view_copies} (--contrastive 0 turns the views off)")
    if view_copies > 1 and not contrastive:
        raise TrafficMoeError(f"--view-copies {view_copies} makes views for the contrastive term, which is off: "
                              "add --contrastive W (e.g. 1.0)")
    set_seed(seed)
    if "test" in splits:  # a notice to the command's user, one line on stderr (errors.py)
        print("warning: pretraining on a split named 'test'", file=sys.stderr)
    parts = []
    if init_from:
        from .common import checkpoint_model_type, pretrained_folder

        init_from = pretrained_folder(init_from)
        dense = checkpoint_model_type(init_from) == "bert"
    tokenizer = data_tokenizer(data, init_from)  # every source (and the checkpoint) tokenized alike, else a clear error
    available = {}
    read = []  # (source folder, split) in reading order
    for path in data:
        prepared = load_prepared(path, labelled=False)
        available[path] = {s: len(prepared[s]) for s in prepared}
        read += [(path, prepared[split]) for split in splits if split in prepared and len(prepared[split])]
    services = service_vocabulary([part for _, part in read]) if service else None
    if services is not None and len(services["classes"]) < 2:  # a notice to the command's user (errors.py)
        print(f"pretrain: --service {service}: fewer than two services (transport/port pairs in at least "
              f"{SERVICE_MIN_FLOWS} flows of {SERVICE_MIN_FILES} capture files) in this corpus; the service loss is "
              f"off", file=sys.stderr)
        services = None
    extra = ("service_label",) if services else ()
    for path, part in read:
        if services:
            part = part.add_column("service_label", service_labels(part, services["classes"]))
        if not contrastive:
            parts.append(_unlabelled(model_view(part, dense=dense, extra=extra)))
            continue
        for copy in range(view_copies):  # copy 0 is the single view of the default
            viewed = shaped_views(part, path, seed=seed + 1000 * copy, budgets=view_budgets)
            parts.append(_unlabelled(model_view(viewed, dense=dense, extra=VIEW_COLUMNS + extra)))
    if not parts:
        raise TrafficMoeError(f"no samples in splits {list(splits)} of {list(data)}; they have "
                         + "; ".join(f"{p}: {h or 'nothing'}" for p, h in available.items())
                         + " — choose others with --splits (never a split you will test on)")
    corpus = concatenate_datasets(parts).shuffle(seed=seed)

    cfg = None if init_from else moe_config(config, tokenizer, **(config_overrides or {}))
    if init_from:
        model = (BertForMaskedLM if dense else TrafficMoeForMaskedLM).from_pretrained(init_from)
    elif dense:
        model = BertForMaskedLM(dense_config(cfg, match=match, max_length=dense_positions(tokenizer)))
    else:
        model = TrafficMoeForMaskedLM(cfg)
    collator = MaskedPacketCollator(
        tokenizer, mlm_probability=mlm_probability, span_probability=span_probability,
        packet_probability=packet_probability, pad_to_multiple_of=8, mask_seed=seed,
    )
    callbacks = [_EpochCallback(collator)] + ([] if dense else [ExpertLoadCallback(model)])
    if contrastive:
        collator = TwoViewCollator(collator)
    if dense:  # BERT reads the direction as token type
        collator = _TokenTypeCollator(collator)
    if services:  # a linear head on the pooled flow, trained with the encoder and left out of the saved model
        if dense:  # ... reading BERT's pooler, as its classifier will (saved with the model)
            attach_dense_pooler(model, init_from)
        attach_service_head(model, len(services["classes"]), seed)
        collator = ServiceLabelCollator(collator)
    out = Path(out)
    training_args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=epochs,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        warmup_steps=0.06,
        weight_decay=0.01,
        lr_scheduler_type="linear",
        logging_steps=10,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),  # lets torchrun start CPU (gloo) DDP without extra settings
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),  # on a GPU: bf16 autocast
        seed=seed,
        data_seed=seed,
        disable_tqdm=not progress,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    trainer_cls = (objectives_trainer(Trainer, contrastive, temperature, service if services else 0.0)
                   if contrastive or services else Trainer)
    trainer = trainer_cls(model=model, args=training_args, train_dataset=corpus, data_collator=collator,
                          processing_class=tokenizer, callbacks=callbacks)
    last = None
    if resume:
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(str(out / "checkpoints")) if (out / "checkpoints").is_dir() else None
        if last is None:  # a notice to the command's user (errors.py)
            print(f"--resume: no checkpoint under {out / 'checkpoints'}, starting fresh", file=sys.stderr)
        else:
            check_resume_shape(model.config, last)
            check_resume_service(getattr(model, "service_head", None), last)
            check_resume_contrastive(contrastive, last)
    result = trainer.train(resume_from_checkpoint=last)
    if services:  # pretraining's own head: not part of the encoder that is shared
        del model.service_head
    objectives = "masked-packet" + (" + flow-contrastive" if contrastive else "") + (
        f" + service ({len(services['classes'])} transport/port classes)" if services else "")
    card = {
        "training_data": f"{objectives} pretraining on {len(corpus)} flows from {', '.join(map(str, data))} "
        f"(splits: {', '.join(splits)})",
        "evaluation": "pretraining only; see the fine-tuned checkpoints",
    }
    from ..atomic import atomic_checkpoint

    # saved beside OUT and moved in complete (OUT/checkpoints carried over for --resume): a failed save leaves an
    # earlier model in OUT as it was
    with atomic_checkpoint(out, trainer.is_world_process_zero(), trainer.accelerator.wait_for_everyone) as saving:
        save_final_model(trainer, model, saving, **({} if dense else {"card_data": card}))
        (tokenizer.set_bert_inputs() if dense else tokenizer).save_pretrained(saving)
    history = [h for h in trainer.state.log_history if "loss" in h]
    summary = {
        "out": str(out),
        "model": type(model).__name__,
        **parameter_summary(model),
        "samples": len(corpus),
        "steps": trainer.state.global_step,
        "resumed_from": last,
        "contrastive": contrastive,
        "view_copies": view_copies if contrastive else 0,
        "view_budgets": view_budgets if contrastive else None,
        "service": service if services else 0.0,
        # the classes of the service term and how many flows of the corpus (before views) carried one
        "services": services,
        "train_loss": result.training_loss,
        # the compute behind the checkpoint (this run; a resumed run adds its own): for the model card and the record
        "compute": {"steps_this_run": trainer.state.global_step - (_checkpoint_step(last) if last else 0),
                    "seconds_this_run": round(result.metrics.get("train_runtime", 0.0), 1),
                    "flows_per_step": batch_size * (2 if contrastive else 1),
                    "mean_tokens_per_flow": _mean_tokens(corpus),
                    "machine": device_summary(), "torch_threads": torch.get_num_threads(),
                    "bf16": training_args.bf16},
        "first_logged_loss": history[0]["loss"] if history else None,
        "last_logged_loss": history[-1]["loss"] if history else None,
        "log_history": trainer.state.log_history,
        # kept for --resume (optimizer state, pickled Trainer files); OUT without it is the folder to share
        "resume_checkpoints": str(out / "checkpoints") if (out / "checkpoints").is_dir() else None,
    }
    (out / "pretrain_summary.json").write_text(json.dumps(summary, indent=2))
    return {k: v for k, v in summary.items() if k != "log_history"}


def _checkpoint_step(path) -> int:
    return int(str(path).rstrip("/").rsplit("-", 1)[-1])


def _mean_tokens(corpus) -> float:
    """Mean number of real tokens per flow of the corpus (tokens seen = steps x flows per step x this)."""
    n = min(len(corpus), 2000)
    return round(float(np.mean([sum(m) for m in corpus.select(range(n))["attention_mask"]])), 1) if n else 0.0


def _unlabelled(view):
    """Pretraining reads no labels (a labelled dataset's are dropped; a ``--labels none`` corpus has none)."""
    return view.remove_columns(["label"]) if "label" in view.column_names else view


# ------------------------------------------------------------------------------ flow-contrastive
VIEW_COLUMNS = tuple(f"view_{c}" for c in ("input_ids", "attention_mask", "packet_ids", "direction_ids"))


def shaped_views(split, data_path=None, seed: int = 0, budgets: str = "list"):
    """``split`` with ``view_*`` columns: the model input of a shaped copy of every flow (one
    black-box shaping transform at a budget drawn from the adversarial-training budgets — the fixed
    list ``TRAIN_BUDGETS`` or, with ``budgets="ranges"``, ``TRAIN_RANGES`` — seeded per flow). Rows
    without packets (nothing to shape) keep their own input as the view."""
    from ..data.prepared import dataset_options
    from ..shaping.attacks import row_seed
    from ..shaping.augment import TRAIN_BUDGETS, TRAIN_RANGES, draw_choices, shape_rows

    if budgets not in ("list", "ranges"):
        raise ValueError(f"view budgets must be 'list' or 'ranges', not {budgets!r}")
    options = dataset_options(data_path) if data_path else {}
    rng = np.random.default_rng(row_seed(seed, "views", len(split)))
    choice = draw_choices(rng, len(split), TRAIN_BUDGETS if budgets == "list" else TRAIN_RANGES)
    columns = [c[len("view_"):] for c in VIEW_COLUMNS]
    shaped = shape_rows(split, choice, lambda key: row_seed(seed, "views", *key), columns, options, skip_empty=True,
                        purpose="contrastive pretraining")
    views = {f"view_{c}": [own if new is None else new for own, new in zip(split[c], shaped[c])] for c in columns}
    for c in VIEW_COLUMNS:
        split = split.add_column(c, views[c], feature=split.features[c[len("view_"):]])
    return split


class TwoViewCollator:
    """Batch of 2B rows from B flows: the flows (rows 0..B-1), then their shaped views (B..2B-1),
    each masked by the wrapped masked-packet collator."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, features):
        first = [{k: v for k, v in f.items() if not k.startswith("view_")} for f in features]
        second = [{k[len("view_"):]: v for k, v in f.items() if k.startswith("view_")} for f in features]
        return self.inner(first + second)


def nt_xent(pooled: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent over 2B pooled vectors where row i and row i+B are two views of one flow."""
    z = torch.nn.functional.normalize(pooled.float(), dim=-1)
    b = z.shape[0] // 2
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return torch.nn.functional.cross_entropy(sim, target)


def objectives_trainer(base_cls, contrastive: float, temperature: float, service: float = 0.0):
    """A `Trainer` subclass adding to the model's masked-packet loss, on the mean-pooled last hidden states (what
    the classifier reads): ``contrastive`` x NT-Xent between the two views of each flow (batches of
    :class:`TwoViewCollator`), and ``service`` x the cross-entropy of the service head (``model.service_head``,
    labels ``service_labels`` from :class:`ServiceLabelCollator`, -100 ignored; both views carry their flow's
    label). Under gradient accumulation the terms are divided like the model's own loss; their running means are
    logged as ``contrastive_loss`` and ``service_loss``."""

    class ObjectivesPretrainer(base_cls):
        _sums = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("service_labels", None) if service else None
            inputs = {**inputs, "output_hidden_states": True}
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            pooled = masked_mean(outputs.hidden_states[-1], inputs["attention_mask"])
            terms = {}
            if contrastive:
                terms["contrastive_loss"] = (contrastive, nt_xent(pooled, temperature))
            if labels is not None:
                inner = getattr(model, "module", model)
                labels = labels.to(pooled.device).repeat(pooled.shape[0] // labels.shape[0])
                logits = inner.service_head(classifier_input(inner, pooled, outputs.hidden_states[-1])).float()
                if bool((labels >= 0).any()):
                    terms["service_loss"] = (service, torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100))
                else:  # a batch without a known service adds nothing (not NaN), yet every parameter gets a gradient
                    loss = loss + 0.0 * logits.sum()  # (under DDP an unused parameter stops the step)
            self._sums = self._sums or {}
            scaled_for_ga = self.model_accepts_loss_kwargs and num_items_in_batch is not None
            for name, (weight, term) in terms.items():
                total, n = self._sums.get(name, (0.0, 0))
                self._sums[name] = (total + float(term.detach()), n + 1)
                if scaled_for_ga and model.training:  # the Trainer will not divide this loss by the GA steps
                    term = term / self.current_gradient_accumulation_steps
                loss = loss + weight * term
            return (loss, outputs) if return_outputs else loss

        def log(self, logs, *args, **kwargs):
            if "loss" in logs and self._sums:
                for name, (total, n) in self._sums.items():
                    logs[name] = round(total / n, 4)
                self._sums = {}
            return super().log(logs, *args, **kwargs)

    return ObjectivesPretrainer


def classifier_input(model, pooled: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
    """What a sequence classifier fine-tuned from this checkpoint will read of the flow, so that the service term
    trains exactly that: Traffic-MoE's classifier reads ``head(pooled)`` (the mean-pooled flow through the
    prediction-head transform it loads from the pretrained checkpoint); BERT's reads its pooler on the ``[CLS]``
    state (``hidden``: the last hidden states), which :func:`attach_dense_pooler` gives the masked-LM model. A BERT
    without a pooler reads the mean-pooled flow itself."""
    if isinstance(model, TrafficMoeForMaskedLM):
        return model.head(pooled)
    pooler = getattr(getattr(model, "bert", None), "pooler", None)
    return pooled if pooler is None or hidden is None else pooler(hidden)


def attach_dense_pooler(model, folder=None) -> None:
    """BERT's pooler (a dense layer + tanh on the ``[CLS]`` state) for a ``BertForMaskedLM``, which is built without
    one: what ``BertForSequenceClassification`` classifies from. Without it a dense checkpoint's classifier started
    from a random pooler that pretraining never trained (the "untrained pooler" handicap of the dense rows up to
    version 2). Its weights are saved with the model (``bert.pooler.*``) and loaded by ``AutoModel`` and
    ``AutoModelForSequenceClassification``; ``folder``: a checkpoint whose pooler weights to load, if it has them
    (``BertForMaskedLM.from_pretrained`` leaves them out)."""
    from safetensors import safe_open
    from transformers.models.bert.modeling_bert import BertPooler

    pooler = BertPooler(model.config)
    model._init_weights(pooler.dense)
    for file in sorted(Path(folder).glob("model*.safetensors")) if folder else []:
        with safe_open(str(file), framework="pt") as f:
            saved = {k.removeprefix("bert.pooler."): f.get_tensor(k) for k in f.keys() if k.startswith("bert.pooler.")}
        if saved:
            pooler.load_state_dict(saved)
    model.bert.pooler = pooler.to(next(model.parameters()).device)


# ---------------------------------------------------------------------------------- service term
SERVICE_MIN_FLOWS = 10  # a transport/port pair is a class when this many flows of the corpus have it ...
SERVICE_MIN_FILES = 3  # ... in this many capture files (a port one capture happens to use is no service)


def service_key(five_tuple: str) -> str | None:
    """``"tcp/443"`` for ``"tcp 10.0.0.1:51000-10.0.0.2:443"``: the transport and the responder's port (the
    flow table writes the initiator first); None where there is no port to read."""
    from ..data.flows import parse_five_tuple

    try:
        transport, _, (_, port) = parse_five_tuple(five_tuple or "")
    except ValueError:
        return None
    return f"{transport}/{port}" if transport else None


def service_vocabulary(parts) -> dict:
    """The service term's classes over the corpus ``parts`` (prepared splits): the sorted transport/port pairs
    of at least ``SERVICE_MIN_FLOWS`` flows in at least ``SERVICE_MIN_FILES`` capture files, and how many flows
    carry one of them, carry another pair, or have no flow table entry (``five_tuple``) to read."""
    flows, files, unread = {}, {}, 0
    for part in parts:
        if "five_tuple" not in part.column_names:
            unread += len(part)
            continue
        sources = part["source_file"] if "source_file" in part.column_names else [None] * len(part)
        for five_tuple, source in zip(part["five_tuple"], sources):
            key = service_key(five_tuple)
            if key is None:
                unread += 1
                continue
            flows[key] = flows.get(key, 0) + 1
            files.setdefault(key, set()).add(source)
    classes = sorted(k for k, n in flows.items() if n >= SERVICE_MIN_FLOWS and len(files[k]) >= SERVICE_MIN_FILES)
    labelled = sum(flows[k] for k in classes)
    return {"classes": classes, "flows_labelled": labelled, "flows_other_port": sum(flows.values()) - labelled,
            "flows_without_port": unread}


def service_labels(part, classes: list[str]) -> list[int]:
    """Each flow's class index in ``classes``, -100 (ignored by the loss) for any other or unknown service."""
    index = {k: i for i, k in enumerate(classes)}
    if "five_tuple" not in part.column_names:
        return [-100] * len(part)
    return [index.get(service_key(t), -100) for t in part["five_tuple"]]


def attach_service_head(model, num_services: int, seed: int = 0) -> None:
    """``model.service_head``: a linear layer from the pooled flow to the service classes, a submodule during
    pretraining (so the Trainer's optimizer, checkpoints and ``--resume`` carry it); removed before the final
    save."""
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(model.config.hidden_size, num_services)
    with torch.no_grad():
        head.weight.normal_(0.0, model.config.initializer_range, generator=generator)
        head.bias.zero_()
    model.service_head = head.to(next(model.parameters()).device)


class ServiceLabelCollator:
    """Wraps a collator: each feature's ``service_label`` leaves the features and becomes ``service_labels``
    (one per flow; the views of :class:`TwoViewCollator` share it)."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, features):
        labels = torch.tensor([int(f["service_label"]) for f in features], dtype=torch.long)
        batch = self.inner([{k: v for k, v in f.items() if k != "service_label"} for f in features])
        batch["service_labels"] = labels
        return batch


class _TokenTypeCollator:
    """Wraps a collator for BERT: the tokenizer pads `direction_ids`; BERT reads them as `token_type_ids`."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, features):
        features = [{("direction_ids" if k == "token_type_ids" else k): v for k, v in f.items()} for f in features]
        batch = self.inner(features)
        batch["token_type_ids"] = batch.pop("direction_ids")
        return batch
