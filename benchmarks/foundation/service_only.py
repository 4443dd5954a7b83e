"""The experiment behind ``pretrain --service``: the service term ALONE (no masked packets, no views), a plain torch loop.

    .venv/bin/python benchmarks/foundation/service_only.py INIT OUT STEPS     # INIT: a checkpoint folder or random:mini
    (env T=threads, LR=peak learning rate, default 5e-4; WORK folder fixed below)

Each flow of the corpus (the four train splits of make_corpus.py) whose responder transport/port pair is one of
`pretrain --service`'s classes (>= 10 flows in >= 3 capture files: recipes.pretrain.service_vocabulary) is labelled
with that pair (the model never reads ports: the compact layout drops them);
the sequence classifier of INIT learns to predict it (batches of 32 drawn with weights 1/sqrt(class size)); OUT is
then probed like any checkpoint (probe.py). Recorded in docs/results/foundation.md (2026-12-06 evening): from random
mini, 400 steps, the 10-per-class probe on sv17's validation split went 0.496 -> 0.620.
"""
import sys, os, time
import numpy as np, torch
from datasets import load_from_disk, concatenate_datasets
torch.set_num_threads(int(os.environ.get("T", "2")))
from traffic_moe_hf import TrafficMoeForSequenceClassification
from traffic_moe_hf.recipes.common import TrafficCollator, from_pretrained_quietly, moe_config
from traffic_moe_hf.recipes.pretrain import service_labels, service_vocabulary
from traffic_moe_hf.tokenization_traffic_moe import TrafficTokenizer
W = os.environ.get("WORK", "/work/data/foundation").rstrip("/") + "/"
init, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
parts = []
for name in ["corpus-public", "loopback9", "tls9", "attack10"]:
    d = load_from_disk(W + name)["train"]
    parts.append(d.select_columns(["input_ids", "attention_mask", "packet_ids", "direction_ids", "five_tuple", "source_file"]))
ds = concatenate_datasets(parts)
vocab = service_vocabulary([ds])["classes"]  # the classes `pretrain --service` uses on this corpus
lab = np.asarray(service_labels(ds, vocab)); keep = np.nonzero(lab >= 0)[0]
print(len(vocab), "classes", len(keep), "of", len(ds), "flows", vocab, flush=True)
ds = ds.select(keep).remove_columns(["five_tuple", "source_file"]); lab = lab[keep]
freq = np.bincount(lab); w = 1 / np.sqrt(freq[lab]); w = w / w.sum()
tok = TrafficTokenizer(); col = TrafficCollator(tok)
labels = dict(num_labels=len(vocab))
if init.startswith("random:"):
    torch.manual_seed(0); model = TrafficMoeForSequenceClassification(moe_config(init.split(":")[1], tok, **labels))
else:
    model = from_pretrained_quietly(TrafficMoeForSequenceClassification, init, **labels)
model.config.output_router_logits = True
opt = torch.optim.AdamW(model.parameters(), lr=float(os.environ.get("LR", "5e-4")), weight_decay=0.01)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / 20) * max(0.0, 1 - s / steps))
rng = np.random.default_rng(0); model.train(); t = time.time()
for s in range(steps):
    idx = rng.choice(len(ds), 32, p=w)
    b = col([{**ds[int(i)], "label": int(lab[i])} for i in idx])
    o = model(**b); loss = o.loss
    loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); sched.step(); opt.zero_grad()
    if s % 20 == 0: print(s, round(loss.item(), 3), round(time.time() - t), flush=True)
model.config.output_router_logits = False
model.save_pretrained(out); tok.save_pretrained(out)
print("done", round(time.time() - t), flush=True)
