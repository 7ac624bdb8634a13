"""Every script in examples/ runs offline from a fresh checkout and writes what it says."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WRITES = {"profile_and_place.py": ["card.json", "card.html"],
          "trainer_callback.py": ["layerprof/card.json", "layerprof/placement.json", "layerprof/card.html",
                                  "layerprof/adapter/adapter_config.json", "layerprof/axolotl.yml",
                                  "layerprof/llamafactory.yaml"],
          "export_configs.py": ["adapter/adapter_config.json", "axolotl.yml", "llamafactory.yaml"]}


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(WRITES)


@pytest.mark.parametrize("script", sorted(WRITES))
def test_example_runs(script, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(EXAMPLES / script), "--out", str(tmp_path)], capture_output=True,
                       text=True, timeout=600, env={**os.environ, **env})
    assert r.returncode == 0, r.stderr[-3000:]
    for name in WRITES[script]:
        assert (tmp_path / name).is_file(), name
