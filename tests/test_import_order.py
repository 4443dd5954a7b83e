"""The lazy package root registers the Auto classes whatever the import order: the registration waits while
any transformers module is half-imported (it used to run inside transformers' modeling_utils import, through
its quantizers, and break `from transformers import BertForSequenceClassification` after a recipe import)."""

import subprocess
import sys

import pytest

ORDERS = {
    "recipe then a transformers model": "import traffic_moe_hf.recipes.finetune\nfrom transformers import BertForSequenceClassification",
    "package then Auto": "import traffic_moe_hf\nfrom transformers import AutoConfig",
    "transformers model then data layer": "from transformers import BertModel\nimport traffic_moe_hf.data.prepare\nfrom transformers import AutoConfig",
    "data layer then modeling": "import traffic_moe_hf.data.prepare\nfrom traffic_moe_hf import TrafficMoeModel\nfrom transformers import AutoConfig",
}


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_import_orders_register_the_auto_classes(order):
    code = ORDERS[order] + "\nassert type(AutoConfig.for_model('traffic_moe')).__name__ == 'TrafficMoeConfig'" \
        if "AutoConfig" in ORDERS[order] else ORDERS[order]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
