#!/usr/bin/env python3
"""Pretraining and flow classification with plain `transformers.Trainer` — what `traffic-moe pretrain`
and `traffic-moe finetune` do, without the CLI, for users who want the training loop in their own code.

    python examples/trainer_recipe.py [CAPTURES ...] [--out runs/trainer-example] [--pretrain-steps 200]
                                      [--finetune-epochs 8] [--labels file]

Default input: the real captures shipped in data/demo/loopback9 (one pcap per application protocol,
labels from the file names). Steps:

1. `prepare`: captures -> anonymised, tokenized, flow-split `datasets.DatasetDict` (+ report.json).
2. Masked-packet pretraining: `AutoModelForMaskedLM.from_config` + the project's
   `MaskedPacketCollator` (a `DataCollatorForLanguageModeling`: BERT's 80/10/10 byte masking plus byte
   spans and whole packets) on the *train* split, labels removed. The model's loss already holds the
   router's load-balancing and z-losses.
3. Fine-tuning: `AutoModelForSequenceClassification.from_pretrained(<pretrained>, num_labels=...)`, best
   checkpoint by validation macro-F1 (metrics computed locally: `evaluate.load` needs the Hub), early
   stopping.
4. Save a Hub-style folder, reload it with `AutoModelForSequenceClassification`, score the test split.

The recipes behind the CLI add what a study needs on top (class weights, few-shot sampling, LP-FT,
shaping augmentation, the dense baseline, expert-load logging, the shortcut audit); this file stays
the short path.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from datasets import load_from_disk
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    EarlyStoppingCallback,
    Trainer,
    TrainingArguments,
)

from traffic_moe_hf import TrafficMoeConfig
from traffic_moe_hf.cli import no_library_bars
from traffic_moe_hf.data.prepare import format_report, prepare
from traffic_moe_hf.recipes.common import TrafficCollator, data_tokenizer, model_view, trainer_metrics
from traffic_moe_hf.recipes.pretrain import MaskedPacketCollator

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo" / "loopback9"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("captures", nargs="*", default=[str(DEMO)])
    parser.add_argument("--out", default="runs/trainer-example")
    parser.add_argument("--labels", default="file", help="dir | file | csv:PATH (as `traffic-moe prepare`)")
    parser.add_argument("--config", default="tiny", help="size preset: tiny | small | base")
    parser.add_argument("--pretrain-steps", type=int, default=200)
    parser.add_argument("--finetune-epochs", type=float, default=8.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.no_progress:  # also the libraries' own bars ("Loading weights", "Saving the dataset"), as the CLI does
        no_library_bars()
    out = Path(args.out)
    common_args = dict(per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64, report_to="none",
                       seed=args.seed, disable_tqdm=args.no_progress, use_cpu=not torch.cuda.is_available(),
                       remove_unused_columns=False, dataloader_num_workers=0)

    # 1. captures -> DatasetDict (flow-level split, anonymised headers, tokenized)
    data = out / "data"
    report = prepare(args.captures, str(data), labels=args.labels, split="flow", ratios=(0.6, 0.2, 0.2),
                     seed=args.seed, progress=not args.no_progress)
    print(format_report(report))
    if report["files_read"] == 0:
        raise SystemExit("no capture could be read")
    splits = load_from_disk(str(data))
    tokenizer = data_tokenizer(str(data))  # the tokenizer the data were tokenized with
    names = splits["train"].features["label"].names

    # 2. masked-packet pretraining on the train split, labels dropped
    corpus = model_view(splits["train"]).remove_columns(["label"])
    mlm = AutoModelForMaskedLM.from_config(TrafficMoeConfig.from_preset(args.config))
    collator = MaskedPacketCollator(tokenizer, mlm_probability=0.15, pad_to_multiple_of=8, mask_seed=args.seed)
    trainer = Trainer(model=mlm, train_dataset=corpus, data_collator=collator, processing_class=tokenizer,
                      args=TrainingArguments(output_dir=str(out / "pretrain-checkpoints"), max_steps=args.pretrain_steps,
                                             learning_rate=1e-3, warmup_steps=0.06, logging_steps=20,
                                             save_strategy="no", **common_args))
    pretrain_loss = trainer.train().training_loss
    pretrained = out / "pretrained"
    trainer.save_model(str(pretrained))  # config, weights and tokenizer

    # 3. fine-tune a flow classifier from the pretrained encoder (a new head: the MLM head is dropped)
    labels = dict(num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    classifier = AutoModelForSequenceClassification.from_pretrained(str(pretrained), **labels)

    metrics = trainer_metrics(names)  # accuracy and macro-F1, computed locally (scikit-learn)
    steps_per_epoch = max(1, -(-len(splits["train"]) // args.batch_size))
    trainer = Trainer(model=classifier, train_dataset=model_view(splits["train"]),
                      eval_dataset=model_view(splits["validation"]), data_collator=TrafficCollator(tokenizer),
                      processing_class=tokenizer, compute_metrics=metrics,
                      callbacks=[EarlyStoppingCallback(early_stopping_patience=3)],
                      args=TrainingArguments(output_dir=str(out / "finetune-checkpoints"),
                                             num_train_epochs=args.finetune_epochs, learning_rate=2e-3,
                                             warmup_steps=0.06, weight_decay=0.01, logging_steps=10,
                                             eval_strategy="steps", eval_steps=steps_per_epoch,
                                             save_strategy="steps", save_steps=steps_per_epoch, save_total_limit=2,
                                             load_best_model_at_end=True, metric_for_best_model="macro_f1",
                                             **common_args))
    trainer.train()

    # 4. a Hub-style folder, reloaded through the Auto classes, scored on the test split
    final = out / "classifier"
    trainer.save_model(str(final))
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(final))
    tester = Trainer(model=reloaded, data_collator=TrafficCollator(tokenizer), compute_metrics=metrics,
                     args=TrainingArguments(output_dir=str(out / "test"), **common_args))
    test = tester.evaluate(model_view(splits["test"]), metric_key_prefix="test")
    result = {"pretrain_loss": pretrain_loss, "test_accuracy": test["test_accuracy"],
              "test_macro_f1": test["test_macro_f1"], "test_flows": len(splits["test"]), "classifier": str(final)}
    print(f"\npretraining loss {pretrain_loss:.3f}; test split ({len(splits['test'])} flows never seen in training): "
          f"accuracy {test['test_accuracy']:.3f}, macro-F1 {test['test_macro_f1']:.3f}; model folder {final}")
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
