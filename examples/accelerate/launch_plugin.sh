#!/usr/bin/env bash
# Train one plugin on several GPUs with the stock CLI (`hf-plugins train` is a Trainer script, so accelerate
# launches it unchanged). Usage: examples/accelerate/launch_plugin.sh <plugin> [ddp|fsdp2] [extra CLI args...]
#   plugin: lift | seft | stable_spam | alphadecay | meap | coe | neurotrails
set -euo pipefail
plugin=${1:?plugin}; mode=${2:-ddp}; shift $(( $# >= 2 ? 2 : 1 ))
here=$(cd "$(dirname "$0")" && pwd)
export NCCL_NVLS_ENABLE=0  # leave NVLink multicast off
case "$plugin" in
  lift)        args=(--method lift) ;;
  seft)        args=(--method seft) ;;          # on a pruned model: hf-plugins prune ... first
  stable_spam) args=(--optim stable_spam) ;;
  alphadecay)  args=(--optim alphadecay) ;;
  meap)        args=(--collator meap) ;;
  coe)         args=(--model_config coe) ;;
  neurotrails) args=(--model_config neurotrails) ;;
  *) echo "unknown plugin $plugin" >&2; exit 2 ;;
esac
exec accelerate launch --config_file "$here/$mode.yaml" -m hf_plugins.cli.main train "${args[@]}" "$@"
