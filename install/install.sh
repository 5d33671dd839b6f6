#!/usr/bin/env bash
# Install sdbridge into ./.venv.
#   install/install.sh [--cpu|--cuda] [--dev] [--extras ndi,video,...] [--python PYTHON]
# Without --cpu/--cuda the CUDA build of torch is chosen only when nvidia-smi finds a GPU.
# Safe to run again: an existing .venv is reused and only what is missing is installed.
set -euo pipefail

TORCH_VERSION="2.13.0"
CUDA_INDEX="https://download.pytorch.org/whl/cu128"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"
flavour="auto"
dev=0
extras=""

die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) flavour="cpu" ;;
    --cuda) flavour="cuda" ;;
    --dev) dev=1 ;;
    --extras) [ $# -ge 2 ] || die "--extras needs a value, e.g. --extras ndi,video"; extras="$2"; shift ;;
    --extras=*) extras="${1#--extras=}" ;;
    --python) [ $# -ge 2 ] || die "--python needs a value"; python="$2"; shift ;;
    -h|--help) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done

command -v "$python" >/dev/null 2>&1 || die "'$python' not found: install Python >= 3.10 or pass --python"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "Python >= 3.10 is required, '$python' is $("$python" -V 2>&1)"

if [ "$flavour" = "auto" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    flavour="cuda"
  else
    flavour="cpu"
  fi
  say "no --cpu/--cuda given: chose the $flavour build of torch"
fi

if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  "$python" -m venv "$venv" || die "could not create a venv (Debian: apt-get install python3-venv)"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

# The CPU wheel: a local one if pip's find-links already has it (offline mirrors, CI caches),
# else PyTorch's CPU index. Installed without dependencies first so that no other index is
# asked for torch's dependencies, which then come from the normal index.
install_cpu_torch() {
  local tmp wheel
  tmp="$(mktemp -d)"
  if "${pip[@]}" download -q --no-index --no-deps -d "$tmp" "torch==$TORCH_VERSION" 2>/dev/null; then
    wheel="$(ls "$tmp"/torch-*.whl 2>/dev/null | head -n 1)"
  fi
  if [[ -n "${wheel:-}" && "$wheel" == *+cpu* ]]; then
    say "using the local CPU wheel $(basename "$wheel")"
    "${pip[@]}" install -q --no-deps "$wheel" || return 1
  else
    "${pip[@]}" install -q --no-deps "torch==$TORCH_VERSION" --timeout 30 \
      --index-url https://download.pytorch.org/whl/cpu || return 1
  fi
  rm -rf "$tmp"
  "${pip[@]}" install -q "torch==$TORCH_VERSION"  # its dependencies; torch itself is in place
}

have_torch="$("$venv/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
if [ "$flavour" = "cpu" ]; then
  if [[ "$have_torch" == "$TORCH_VERSION"* && "$have_torch" != *cu* ]]; then
    say "torch $have_torch (CPU) already installed"
  else
    say "installing torch==$TORCH_VERSION (CPU build)"
    install_cpu_torch || die "could not install torch==$TORCH_VERSION (CPU build); check the network or pip's index settings"
  fi
else
  if [[ "$have_torch" == *cu* ]]; then
    say "torch $have_torch (CUDA) already installed"
  else
    say "installing torch==$TORCH_VERSION (CUDA build from $CUDA_INDEX)"
    "${pip[@]}" install "torch==$TORCH_VERSION" --index-url "$CUDA_INDEX" -q \
      || die "could not install the CUDA build of torch; retry with --cpu"
  fi
fi

spec="."
groups="$extras"
[ "$dev" = 1 ] && groups="${groups:+$groups,}dev"
[ -n "$groups" ] && spec=".[$groups]"
say "installing sdbridge $spec"
(cd "$here" && "${pip[@]}" install -q -e "$spec") || die "pip could not install sdbridge $spec"

"$venv/bin/python" -c 'import bridge, torch; print("install.sh: sdbridge", bridge.__version__, "with torch", torch.__version__)' \
  || die "sdbridge installed but does not import"
say "done. Next: .venv/bin/sdbridge demo   (or: .venv/bin/sdbridge --help)"
