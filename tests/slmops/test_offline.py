"""The offline defaults every entry point sets before its libraries load."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from slmops.offline import OFFLINE_DEFAULTS, apply_offline_defaults
from tests.conftest import REPO


def test_unset_variables_get_the_defaults_and_set_ones_are_kept():
    env = {"HF_HUB_OFFLINE": "0"}
    apply_offline_defaults(env)
    assert env == {**OFFLINE_DEFAULTS, "HF_HUB_OFFLINE": "0"}


@pytest.mark.parametrize(("given", "kept"), [("1", "true"), ("YES", "true"), ("0", "0")])
def test_do_not_track_is_spelt_as_mlflow_reads_it(given, kept):
    env = {"DO_NOT_TRACK": given}
    apply_offline_defaults(env)
    assert env["DO_NOT_TRACK"] == kept


# What the service's process has in its environment by the time it imports
# huggingface_hub (which reads HF_HUB_OFFLINE once, at import) and mlflow.
PROBE = """
import json, os, runpy, sys
import slmops.serving.__main__ as main_module
import huggingface_hub.constants as hf
import mlflow.telemetry.utils as mt
print(json.dumps({"hf_offline": hf.HF_HUB_OFFLINE,
                  "mlflow_off": mt.is_telemetry_disabled(),
                  "dnt": os.environ["DO_NOT_TRACK"]}))
"""


def test_python_m_slmops_serving_is_offline_before_its_libraries_load():
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_DEFAULTS}
    env["DO_NOT_TRACK"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"hf_offline": True, "mlflow_off": True, "dnt": "true"}
