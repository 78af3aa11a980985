"""A Hugging Face model id resolves through the hub cache, offline too, and gets the checks of a local directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from thematrix.model_dir import PIPELINE_COMPONENTS

REPO_ROOT = Path(__file__).resolve().parents[1]
HUB_ID = "THUDM/CogVideoX-2b"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# Run in a fresh process: huggingface_hub reads HF_HOME and HF_HUB_OFFLINE when it is imported.
CHECK = """
import json, sys
from thematrix.model_dir import check_model_dir
results = {}
for name in sys.argv[1:]:
    try:
        results[name] = ["ok", str(check_model_dir(name))]
    except ValueError as error:
        results[name] = [type(error).__name__, str(error)]
print(json.dumps(results))
"""


def lay_out_cache(hf_home: Path, hub_id: str, model_dir: Path) -> Path:
    """The hub cache's layout for one downloaded snapshot (huggingface_hub's own, without blob links)."""
    repo = hf_home / "hub" / f"models--{hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(model_dir, snapshot)
    return snapshot


def check_offline(hf_home: Path, *names: str) -> dict[str, list[str]]:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-c", CHECK, *names], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_hub_id_resolves_offline_to_the_cached_snapshot_with_the_same_checks(tiny_model_dir, tmp_path):
    hf_home = tmp_path / "hf"
    snapshot = lay_out_cache(hf_home, HUB_ID, tiny_model_dir)
    incomplete = lay_out_cache(hf_home, "someone/incomplete", tiny_model_dir)
    shutil.rmtree(incomplete / "vae")
    index = json.loads((snapshot / "model_index.json").read_text())
    assert set(PIPELINE_COMPONENTS) <= set(index)

    results = check_offline(hf_home, HUB_ID, "someone/incomplete", "someone/not-downloaded", "no/such/dir")
    assert results[HUB_ID] == ["ok", str(snapshot)]
    kind, message = results["someone/incomplete"]
    assert kind == "ModelDirError" and "lacks ['vae']" in message, "a snapshot gets a local directory's checks"
    kind, message = results["someone/not-downloaded"]
    assert kind == "ModelIdError" and "HF_HUB_OFFLINE is set" in message and str(hf_home / "hub") in message
    assert "Fix: pass a local diffusers model directory, or a hub id" in message
    kind, message = results["no/such/dir"]
    assert kind == "ModelDirError" and "is not a directory" in message and HUB_ID in message
