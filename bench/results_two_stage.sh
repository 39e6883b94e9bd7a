#!/usr/bin/env bash
# Results for docs/results.md: the two-stage VQ-VAE and the fitted gmm sampler, on the short CPU budget
# of the other families (first 10,000 training images, 5 epochs, fp32, evaluated on 2,000 test images;
# the gmm fitted to the codes of the same 10,000 training images). docs/results.md says where a run was
# cut shorter on the shared machine (VQ_EPOCHS=1 bash ... for the vq runs).
# Run from the folder that is to hold runs/ (each step is skipped when its output is already there):
#   cd /work/results-run && . /path/to/worktree/../env.sh && nice -n 5 bash /path/to/bench/results_two_stage.sh
set -euo pipefail
COMMON="--limit 10000 --set train.test_limit=2000 --precision fp32 --device cpu"
VQ_EPOCHS=${VQ_EPOCHS:-5}
for family in rae wae aae; do
  [ -f runs/$family/model.safetensors ] || vaezoo run cifar-$family $COMMON --epochs 5 --out runs/$family > logs-$family.txt 2>&1
  [ -f runs/$family/model.sampler-gmm.safetensors ] || vaezoo fit-sampler runs/$family/model.safetensors gmm --limit 10000 > fit-$family.txt 2>&1
  [ -f runs/$family/prior.png ] || vaezoo sample runs/$family/model.safetensors -n 64 --seed 1 --out runs/$family/prior.png
  [ -f runs/$family/gmm.png ] || vaezoo sample runs/$family/model.safetensors -n 64 --seed 1 --sampler gmm --out runs/$family/gmm.png
done
[ -f runs/vq/model.safetensors ] || vaezoo run cifar-vqvae $COMMON --epochs "$VQ_EPOCHS" --out runs/vq > logs-vq.txt 2>&1
[ -f runs/vq-pixelcnn/model.safetensors ] || vaezoo run cifar-vqvae-pixelcnn $COMMON --epochs "$VQ_EPOCHS" --set model.stage1=runs/vq/model.safetensors --out runs/vq-pixelcnn > logs-vqp.txt 2>&1
vaezoo eval runs/vq/model.safetensors --limit 2000 --json > eval-vq.json
vaezoo eval runs/vq-pixelcnn/model.safetensors --limit 2000 --json > eval-vqp.json
vaezoo sample runs/vq-pixelcnn/model.safetensors -n 64 --seed 1 --out runs/vq-pixelcnn/two-stage.png
echo DONE
