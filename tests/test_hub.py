"""A Hugging Face model id resolves through the hub cache, offline too, and gets the checks of a local directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.launching import STAGE1_LAUNCHER, finish, launch
from thematrix.model_dir import LORA_WEIGHT_NAME, PIPELINE_COMPONENTS, GenerationDefaults

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


def offline(hf_home: Path) -> dict[str, str]:
    """The environment of a process that finds models in the cache at ``hf_home`` only."""
    return {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hf_home / "hub")}


def check_offline(hf_home: Path, *names: str) -> dict[str, list[str]]:
    env = {**os.environ, **offline(hf_home)}
    result = subprocess.run(
        [sys.executable, "-c", CHECK, *names], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
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


def test_stage1_trains_and_fuses_from_a_hub_id(tiny_model_dir, tiny_dataset, tmp_path):
    """The hub id's snapshot is what training loads and fuse_lora_weights.py fuses into."""
    hf_home = tmp_path / "hf"
    lay_out_cache(hf_home, HUB_ID, tiny_model_dir)
    data_root, index_file = tiny_dataset
    lora, log = tmp_path / "lora", tmp_path / "stage1.log"
    process = launch(
        STAGE1_LAUNCHER,
        [
            "--config",
            "training/lora_config_tiny.py",
            "--pretrained_model_name_or_path",
            HUB_ID,
            "--data_root",
            str(data_root),
            "--index_file",
            str(index_file),
            "--output_dir",
            str(lora),
            "--max_train_steps",
            "1",
            "--validation_steps",
            "0",
        ],
        log,
        **offline(hf_home),
    )
    code, output = finish(process, log)
    assert code == 0 and (lora / LORA_WEIGHT_NAME).is_file(), output[-4000:]
    fused = tmp_path / "fused"
    result = subprocess.run(
        [
            sys.executable,
            "stage1/fuse_lora_weights.py",
            "--base_model",
            HUB_ID,
            "--lora_dir",
            str(lora),
            "--output_dir",
            str(fused),
        ],
        cwd=REPO_ROOT,
        env={**os.environ, **offline(hf_home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert GenerationDefaults.load(fused) == GenerationDefaults.load(lora) is not None
    snapshot_vae = hf_home / "hub" / f"models--{HUB_ID.replace('/', '--')}" / "snapshots" / COMMIT / "vae"
    assert (fused / "vae" / "config.json").read_bytes() == (snapshot_vae / "config.json").read_bytes()
