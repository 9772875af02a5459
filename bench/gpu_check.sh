#!/usr/bin/env bash
# The GPU check: run it whenever a CUDA machine is at hand (no internet needed once the HF cache is seeded).
# LoRA, int8+LoRA, 4-bit+LoRA, LoRA with activation checkpointing, LoRA under torch.compile and LoRA with the
# whole top block (task.trim_top_block = false) on MiniLM / SST-2 for a few hundred steps, then one table:
# samples/s, peak CUDA memory, the plan's estimate, accuracy. Whether train.compile pays on a GPU: compare
# lora-compile's samples/s with lora's (its first steps include the compile); what the trim saves: lora against
# lora-whole-top-block; what logits at the labelled positions only save in SFT: sft against sft-every-logit (their
# accuracy column is the response's token accuracy).
#
#   python ../shared/offline/seed_hf_cache.py     # once, if the cache is not seeded
#   HF_HUB_OFFLINE=1 bash bench/gpu_check.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-300}"
out="$(mktemp -d)"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this check needs a GPU')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

common=(--set "train.max_steps=$steps" --set "data.max_train_samples=$((steps * 32))" --set "train.eval_every=1000000"
        --set "output.overwrite=true" --set 'plugins.disable=["progress"]')
declare -A variants=(
  [lora]="recipes/lora-sst2.toml"
  [int8-lora]="recipes/int8-lora-sst2.toml"
  [nf4-lora]="recipes/int8-lora-sst2.toml --set methods.int8.bits=4"
  [lora-checkpointing]="recipes/lora-sst2.toml --set train.gradient_checkpointing=true"
  [lora-compile]="recipes/lora-sst2.toml --set train.compile=true"
  [lora-whole-top-block]="recipes/lora-sst2.toml --set task.trim_top_block=false"
  [sft]="recipes/lora-sst2-sft.toml"
  [sft-every-logit]="recipes/lora-sst2-sft.toml --set task.logits_for_labels_only=false"
)
for name in lora int8-lora nf4-lora lora-checkpointing lora-compile lora-whole-top-block sft sft-every-logit; do
  # shellcheck disable=SC2086
  adapt run ${variants[$name]} "${common[@]}" --set "output.dir=$out/$name" > "$out/$name.log" 2>&1 \
    || { echo "$name failed:"; tail -20 "$out/$name.log"; }
done

python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("\n| variant | train samples/s | peak CUDA MiB | planned MiB | planned / measured | val accuracy |")
print("| --- | --- | --- | --- | --- | --- |")
names = ("lora", "int8-lora", "nf4-lora", "lora-checkpointing", "lora-compile", "lora-whole-top-block", "sft", "sft-every-logit")
for name in names:
    f = out / name / "summary.json"
    if not f.is_file():
        print(f"| {name} | failed | | | | |")
        continue
    s = json.loads(f.read_text())
    m = s["memory"]
    measured, planned = m.get("measured_peak_bytes"), m.get("planned_peak_bytes")
    ratio = f"{planned / measured:.2f}" if planned and measured else "–"
    print(f"| {name} | {s['train_samples_per_second']:.1f} | {m.get('peak_cuda_mib', '–')} | "
          f"{(planned or 0) / 2**20:,.0f} | {ratio} | {s['eval'].get('accuracy', s['eval'].get('token_accuracy', float('nan'))):.4f} |")
PY
