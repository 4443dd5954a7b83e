"""`traffic-moe evaluate` on the shipped real captures: labels matched by name, a checkpoint that is no
classifier, flows assembled otherwise than for training, and the open-set check (`--ood`) beside `predict
--reject-below`.

The shared fixtures (``prepared``: the demo slice prepared once; ``pretrained`` and ``finetuned``: a tiny
model pretrained and fine-tuned on it once per session) are in conftest.py.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import datasets
import pytest

from traffic_moe_hf.data.prepare import prepare
from traffic_moe_hf.errors import TrafficMoeError
from traffic_moe_hf.recipes.evaluate import evaluate
from traffic_moe_hf.recipes.predict import predict_files

from conftest import DEMO, REPO, SMALL


def test_evaluate_on_data_with_no_label_the_model_knows_says_so(finetuned, tmp_path):
    """Labels are matched by name: captures labelled otherwise give a clear error naming both label sets,
    not a traceback from the metrics."""
    from traffic_moe_hf.data.prepare import prepare

    out, _ = finetuned
    data = tmp_path / "other-labels"
    prepare([str(DEMO / "dns.pcap")], str(data), labels="dir", split="none", progress=False)  # label "loopback9"
    with pytest.raises(TrafficMoeError, match=r"none of its \d+ samples has a label the model knows.*'loopback9'.*'dns'"):
        evaluate(str(data), str(out), split="test", audit=False)


def test_classifying_with_a_checkpoint_that_is_no_classifier_says_so(pretrained, tmp_path):
    """predict / evaluate / robustness load a fine-tuned classifier; a pretraining checkpoint (random head,
    confident-looking nonsense) or a folder that holds no model is a clear error."""
    from traffic_moe_hf.recipes.evaluate import load_classifier

    with pytest.raises(TrafficMoeError, match="TrafficMoeForMaskedLM checkpoint has no trained classifier head; fine-tune it"):
        load_classifier(str(pretrained[0]))
    with pytest.raises(TrafficMoeError, match="not a model folder"):
        predict_files([str(DEMO / "dns.pcap")], str(tmp_path), str(tmp_path / "out.csv"), progress=False)


def test_evaluate_says_when_flows_were_assembled_otherwise_than_for_training(prepared, capsys):
    from types import SimpleNamespace

    from traffic_moe_hf.recipes.evaluate import warn_flow_assembly

    trained_coalesced = SimpleNamespace(config=SimpleNamespace(traffic_flow_options={"normalize_tcp": True,
                                                                                     "coalesce_tcp": True}))
    assert warn_flow_assembly(str(prepared), trained_coalesced, "m") == ["coalesce_tcp: data False, model True"]
    assert "flows assembled otherwise than m's training data" in capsys.readouterr().err
    same = SimpleNamespace(config=SimpleNamespace(traffic_flow_options={"normalize_tcp": True, "coalesce_tcp": False}))
    assert warn_flow_assembly(str(prepared), same, "m") == [] and not capsys.readouterr().err


def test_open_set_report_scores_separation_and_thresholds():
    """The open-set figures on known inputs: thresholds keep at least their share of the own flows, a foreign
    source fully below them is all rejected (ROC AUC 1), one drawn like the own flows is not told apart (0.5)."""
    from traffic_moe_hf.recipes import open_set

    inside = np.linspace(0.9, 1.0, 200)
    table = open_set.thresholds(inside, correct=np.arange(200) % 2 == 0)
    assert [row["keep"] for row in table] == [0.99, 0.95, 0.90]
    assert all(row["inside_kept"] >= row["keep"] for row in table)
    assert table[0]["threshold"] <= table[1]["threshold"] <= table[2]["threshold"]
    assert 0.4 < table[2]["accuracy_kept"] < 0.6
    below = open_set.report(inside, np.linspace(0.1, 0.8, 50), table)
    assert below["auroc"] == 1.0 and set(below["rejected"].values()) == {1.0}
    alike = open_set.report(inside, inside.copy(), table)
    assert abs(alike["auroc"] - 0.5) < 1e-9 and alike["rejected"]["0.95"] < 0.06
    assert np.allclose(open_set.top_probability(np.log([[0.2, 0.8], [0.5, 0.5]])), [0.8, 0.5])
    assert np.allclose(open_set.energy(np.array([[0.0, 0.0], [1000.0, 1000.0]])), [np.log(2), 1000 + np.log(2)])


def test_open_set_evaluate_and_predict_reject_the_same_foreign_flows(prepared, finetuned, tmp_path):
    """`evaluate --ood` on real foreign traffic (the shipped tls9 re-capture, prepared like the model's data):
    the foreign samples whose label the model knows (ssh) are left out and counted, the model is less sure of
    the rest than of its own test flows, and `predict --reject-below` with the reported threshold labels
    `unknown` the same share of those flows' captures as evaluate said it would reject."""
    out, _ = finetuned
    foreign_captures = sorted(p for p in (REPO / "data" / "shifted" / "tls9-mtu700").glob("*.pcap") if p.stem != "ssh")
    foreign = tmp_path / "foreign"
    prepare([str(REPO / "data" / "shifted" / "tls9-mtu700")], str(foreign), labels="file", split="none",
            progress=False, **SMALL)
    result = evaluate(str(prepared), str(out), audit=False, ood=[str(foreign)], json_out=tmp_path / "ev.json")
    source = result["open_set"]["sources"][str(foreign)]
    ssh = sum(1 for x in datasets.load_from_disk(str(foreign))["test"]["source_file"] if x.endswith("ssh.pcap"))
    assert ssh > 0 and source["excluded_known_label"] == ssh
    assert source["auroc"] > 0.8, source  # foreign traffic is less confidently classified than the model's own
    assert 0.0 <= source["auroc_energy"] <= 1.0
    assert Path(result["plots"]["open_set"]).is_file()
    table = {f"{row['keep']:.2f}": row for row in result["open_set"]["thresholds"]}
    assert all(row["inside_kept"] >= row["keep"] for row in table.values())
    # `--update-card` carries the thresholds into a shared model's card (on a copy)
    import shutil

    from traffic_moe_hf.recipes.evaluate import add_to_model_card

    shutil.copytree(out, tmp_path / "card-copy")
    card = add_to_model_card(tmp_path / "card-copy", result).read_text()
    assert f"| {table['0.95']['threshold']:.6f} | " in card and "`foreign` rejected" in card

    threshold = table["0.95"]["threshold"]
    rows_file = tmp_path / "rejected.csv"
    summary = predict_files([str(p) for p in foreign_captures], str(out), str(rows_file), progress=False,
                            reject_below=threshold)
    with open(rows_file) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == source["samples"] and summary["flows_unknown"] == sum(r["label"] == "unknown" for r in rows)
    assert all((r["label"] == "unknown") == (float(r["probability"]) < threshold) for r in rows)
    assert all(r["closest_label"] in result["per_class"] for r in rows)
    # the flows predict reads from the captures are the ones prepare made: the same share rejected (to a flow
    # or two whose probability sits at the threshold's sixth decimal)
    assert abs(summary["flows_unknown"] - source["rejected"]["0.95"] * source["samples"]) <= 2
    # without --reject-below the output is as before: no `unknown`, no extra column
    plain = tmp_path / "plain.csv"
    predict_files([str(foreign_captures[0])], str(out), str(plain), progress=False)
    with open(plain) as f:
        reader = csv.DictReader(f)
        assert "closest_label" not in reader.fieldnames and all(r["label"] != "unknown" for r in reader)
    from traffic_moe_hf.cli import build_parser

    args = build_parser().parse_args(["evaluate", "--data", "d", "--model", "m", "--json", "o.json", "--ood", "a",
                                      "--ood", "b", "--ood-exclude", "https"])
    assert args.ood == ["a", "b"] and args.ood_exclude == ["https"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "x.pcap", "--model", "m", "--out", "o.csv", "--reject-below", "1.5"])
    with pytest.raises(TrafficMoeError, match="not a dataset"):
        evaluate(str(prepared), str(out), audit=False, ood=[str(tmp_path / "missing")])
