#!/usr/bin/env bash
# Set up a fresh machine: system packages (data set, sshd for the ssh-probe test, chromium for the
# report screenshot), a virtual environment in .venv, CPU PyTorch first, then the package.
#   --yolo  also the Ultralytics extra (edgecompress[yolo]) for --model best.pt checkpoints. It needs
#           torchvision, whose operators (torchvision::nms) are missing against the CPU torch wheel,
#           so this venv gets the full (CUDA) torch build, about 6 GB.
set -euo pipefail
yolo=0
for arg in "$@"; do
  case "$arg" in
    --yolo) yolo=1 ;;
    *) echo "setup.sh: unknown option $arg (valid: --yolo)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  need=()
  [ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
  command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  command -v chromium >/dev/null || need+=(chromium)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
if [ "$yolo" = 1 ]; then
  # No CPU torch first: torchvision pulls the (CUDA) torch it was built against, and replaces the
  # CPU wheel in a venv the default setup made.
  .venv/bin/pip install -q -e ".[dev,yolo]"
  .venv/bin/python -c "import torchvision.ops, ultralytics" \
    || { echo "setup.sh --yolo: ultralytics or torchvision does not import in .venv" >&2; exit 1; }
else
  # torch first: a plain `torch` requirement with no torch installed pulls the CUDA build.
  .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -e ".[dev]"
fi
