#!/usr/bin/env bash
# Every method on real MR (Decathlon Task04 Hippocampus), fold 0, next to nnU-Net on the same split.
#
#  1. autosam_convert_MSD_dataset on the task folder, autosam_plan_and_preprocess twice: the CPU
#     default plans (autosamPlans) and nnU-Net-sized plans (--target gpu -> autosamPlansGPU:
#     patch 40 x 56 x 40, 32-256 features, nnU-Net's batch rule);
#  2. unet fold 0 with the nnU-Net-sized plans and nnU-Net's optimiser (SGD) for NNUNET_ITERS
#     iterations, next to `nnUNetv2_train 4 3d_fullres 0 -tr nnUNetTrainer_1epoch -device cpu`
#     (one nnU-Net epoch = 250 iterations) on the same converted data and the same
#     splits_final.json; prints both tools' seconds per iteration and validation Dice per class;
#  3. unet fold 0 with the CPU default plans, as a user on this machine would run it;
#  4. the four SAM methods on the same fold with their pretrained CPU backbones.
#
# usage: bash benchmarks/real_data/real_hippocampus.sh [WORKDIR]      (default: a fresh temporary folder)
#   env: TASK           MSD task folder (default: $AUTOSAM_SHARED_DATA or ../shared or /work/shared,
#                       data/msd_hippocampus/Task04_Hippocampus)
#        STEPS          which steps to run, any of "convert nnunet unet_cpu sam" (default: all)
#        NNUNET_ITERS   iterations of the nnU-Net-sized comparison (default 250 = one nnU-Net epoch)
#        UNET_SEEDS     seeds of autosam's side of that comparison, one training each (default "12345 1":
#                       within one SGD epoch the Dice depends on when training leaves the all-background
#                       start, so one seed can land far from another)
#        CPU_EPOCHS     epochs of the CPU-plans unet run (default 12; iterations per epoch: the
#                       planner's default, CPU_ITERS to override)
#        SAM_EPOCHS     epochs per SAM method (default 10), SAM_ITERS iterations per epoch (default 50)
#        SAM_METHODS    (default "sautomed masksam medlsam msam"); msam uses SAM-Med3D when
#                       AUTOSAM_SAM_MED3D_CHECKPOINT names its weights, else the random-init tiny3d
#                       backbone (MSAM_TINY=0: skip it instead)
#        NNUNET_TRAIN   0: plan and preprocess with nnU-Net but skip its training (250 iterations at
#                       several seconds each; for smoke runs)
#        INSTALL_BENCH  1: pip install -e ".[bench]" when nnunetv2 is missing (default: skip nnU-Net with a message)
#        NP             worker processes for conversion and preprocessing (default 2)
# Each training's log is in WORKDIR/logs/; a summary table is printed at the end and written to
# WORKDIR/summary.txt. Tiny smoke run: NNUNET_ITERS=2 CPU_EPOCHS=1 CPU_ITERS=2 SAM_EPOCHS=1 SAM_ITERS=2.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${1:-$(mktemp -d /tmp/real_hippocampus.XXXXXX)}
WORK=$(mkdir -p "$WORK" && cd "$WORK" && pwd)
SHARED=${AUTOSAM_SHARED_DATA:-}
if [ -z "$SHARED" ]; then
  if [ -d "$HERE/../shared" ]; then SHARED=$HERE/../shared; else SHARED=/work/shared; fi
fi
TASK=${TASK:-$SHARED/data/msd_hippocampus/Task04_Hippocampus}
STEPS=${STEPS:-convert nnunet unet_cpu sam}
NNUNET_ITERS=${NNUNET_ITERS:-250}
UNET_SEEDS=${UNET_SEEDS:-12345 1}
CPU_EPOCHS=${CPU_EPOCHS:-12}
CPU_ITERS=${CPU_ITERS:-}
SAM_EPOCHS=${SAM_EPOCHS:-10}
SAM_ITERS=${SAM_ITERS:-50}
SAM_METHODS=${SAM_METHODS:-sautomed masksam medlsam msam}
NP=${NP:-2}
export AUTOSAM_RAW=$WORK/raw AUTOSAM_PREPROCESSED=$WORK/preprocessed AUTOSAM_RESULTS=$WORK/results
# nnU-Net reads the same raw folder: the converter writes nnU-Net v2's raw format
export nnUNet_raw=$AUTOSAM_RAW nnUNet_preprocessed=$WORK/nnunet_preprocessed nnUNet_results=$WORK/nnunet_results
mkdir -p "$AUTOSAM_RAW" "$AUTOSAM_PREPROCESSED" "$AUTOSAM_RESULTS" "$nnUNet_preprocessed" "$nnUNet_results" "$WORK/logs"
DS=Dataset004_Hippocampus
has() { case " $STEPS " in *" $1 "*) return 0;; *) return 1;; esac; }
stamp() { echo "[$(date +%T)] $* (load average $(cut -d' ' -f1-3 /proc/loadavg))"; }
echo "workdir $WORK; task $TASK; $(getconf _NPROCESSORS_ONLN) cores; steps: $STEPS"

# ---------------------------------------------------------------- 1. convert, plan and preprocess
if has convert; then
  [ -d "$TASK" ] || { echo "error: $TASK does not exist (set TASK=/path/to/Task04_Hippocampus)" >&2; exit 2; }
  stamp "convert"
  python -m autosam.cli.convert_msd -i "$TASK" -np "$NP" --overwrite --quiet
  stamp "plan and preprocess (CPU default plans)"
  autosam_plan_and_preprocess -d 4 -np "$NP" -c 3d --target cpu --verify_dataset_integrity
  stamp "plan and preprocess (nnU-Net-sized plans)"
  autosam_plan_and_preprocess -d 4 -np "$NP" -c 3d --target gpu -overwrite_plans_name autosamPlansGPU
fi

# ---------------------------------------------------------------- 2. unet vs nnU-Net, same split
NNUNET_OK=0
if has nnunet; then
  if ! python -c "import nnunetv2" 2>/dev/null; then
    if [ "${INSTALL_BENCH:-0}" = 1 ]; then
      stamp "installing nnunetv2 (.[bench])"
      (cd "$HERE" && python -m pip install -e ".[bench]" -c constraints.txt)
    else
      echo "nnunetv2 is not installed: skipping nnU-Net's run. Install it with" \
           "'pip install -e \".[bench]\" -c constraints.txt' (or run with INSTALL_BENCH=1)."
    fi
  fi
  python -c "import nnunetv2" 2>/dev/null && NNUNET_OK=1
  if [ "$NNUNET_OK" = 1 ]; then
    stamp "nnU-Net: plan and preprocess 3d_fullres"
    nnUNetv2_plan_and_preprocess -d 4 -c 3d_fullres -np "$NP" > "$WORK/logs/nnunet_plan.log" 2>&1
    # the same fold 0 as autosam: its splits_final.json has nnU-Net's format
    cp "$AUTOSAM_PREPROCESSED/$DS/splits_final.json" "$nnUNet_preprocessed/$DS/splits_final.json"
    python - "$nnUNet_preprocessed/$DS/nnUNetPlans.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))["configurations"]["3d_fullres"]
print(f"nnU-Net plans 3d_fullres: patch {c['patch_size']}, batch {c['batch_size']}, "
      f"features {c['architecture']['arch_kwargs']['features_per_stage']}, spacing {c['spacing']}")
EOF
    if [ "${NNUNET_TRAIN:-1}" = 1 ]; then
      stamp "nnU-Net: train fold 0, nnUNetTrainer_1epoch (250 iterations), CPU"
      /usr/bin/time -f "nnU-Net: wall %e s" nnUNetv2_train 4 3d_fullres 0 -tr nnUNetTrainer_1epoch -device cpu \
        > "$WORK/logs/nnunet_train.log" 2>&1
      tail -n 1 "$WORK/logs/nnunet_train.log"
    else
      echo "NNUNET_TRAIN=0: nnU-Net's training skipped"
    fi
  fi
  python - "$AUTOSAM_PREPROCESSED/$DS/autosamPlansGPU.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))["configurations"]["3d"]
print(f"autosam plans --target gpu, 3d: patch {c['patch_size']}, batch {c['batch_size']}, "
      f"features {c['network']['features_per_stage']}, spacing {c['spacing']}")
EOF
  # one SGD epoch is dominated by when training leaves the all-background start: one run per seed
  first=1
  for seed in $UNET_SEEDS; do
    results=$AUTOSAM_RESULTS
    [ "$first" = 1 ] || results=$WORK/results_seed$seed  # the first seed's run sits beside the other methods
    first=0
    stamp "autosam unet, nnU-Net-sized plans, SGD, $NNUNET_ITERS iterations, seed $seed"
    AUTOSAM_RESULTS=$results /usr/bin/time -f "autosam unet (nnU-Net-sized, seed $seed): wall %e s" \
      autosam_train 4 3d unet 0 --plans autosamPlansGPU --epochs 1 --iters-per-epoch "$NNUNET_ITERS" \
      --device cpu --optimizer sgd --seed "$seed" --quiet > "$WORK/logs/unet_gpuplans_seed$seed.log" 2>&1
    tail -n 1 "$WORK/logs/unet_gpuplans_seed$seed.log"
  done
fi

# ---------------------------------------------------------------- 3. unet with the CPU default plans
if has unet_cpu; then
  stamp "autosam unet, CPU default plans, $CPU_EPOCHS epochs"
  ITER_FLAG=()
  [ -n "$CPU_ITERS" ] && ITER_FLAG=(--iters-per-epoch "$CPU_ITERS")
  /usr/bin/time -f "autosam unet (CPU plans): wall %e s" \
    autosam_train 4 3d unet 0 --epochs "$CPU_EPOCHS" "${ITER_FLAG[@]}" --device cpu --quiet \
    > "$WORK/logs/unet_cpu.log" 2>&1
  tail -n 1 "$WORK/logs/unet_cpu.log"
fi

# ---------------------------------------------------------------- 4. the SAM methods
if has sam; then
  for m in $SAM_METHODS; do
    extra=()
    if [ "$m" = msam ]; then
      # M-SAM's pretrained backbone is SAM-Med3D (sam_med3d_turbo.pth, given by path)
      if [ -n "${AUTOSAM_SAM_MED3D_CHECKPOINT:-}" ]; then
        extra=(--backbone sam_med3d)
      elif [ "${MSAM_TINY:-1}" = 1 ]; then
        # no pretrained 3D backbone ships with a package: M-SAM's mechanism (MEA, refinement) on
        # the small randomly initialised tiny3d encoder, labelled as such in the summary
        echo "msam: AUTOSAM_SAM_MED3D_CHECKPOINT is not set; training on the random-init tiny3d backbone"
        extra=(--backbone tiny3d)
        : > "$WORK/logs/msam.tiny3d"
      else
        echo "msam: skipped; its pretrained backbone SAM-Med3D needs AUTOSAM_SAM_MED3D_CHECKPOINT=/path/to/sam_med3d_turbo.pth"
        continue
      fi
    fi
    stamp "$m: $SAM_EPOCHS epochs x $SAM_ITERS iterations"
    if /usr/bin/time -f "$m: wall %e s" autosam_train 4 3d "$m" 0 --epochs "$SAM_EPOCHS" \
        --iters-per-epoch "$SAM_ITERS" --device cpu --quiet "${extra[@]}" > "$WORK/logs/$m.log" 2>&1; then
      tail -n 1 "$WORK/logs/$m.log"
    else
      echo "$m: FAILED, see $WORK/logs/$m.log"; tail -n 5 "$WORK/logs/$m.log"
    fi
  done
fi

# ---------------------------------------------------------------- summary
python - "$WORK" "$NNUNET_ITERS" <<'EOF' | tee "$WORK/summary.txt"
import glob, json, os, re, sys
work, nn_iters = sys.argv[1], int(sys.argv[2])
rows = []
def add(name, summary, seconds_per_it="n/a"):
    if not os.path.isfile(summary):
        return
    s = json.load(open(summary))
    per = {k: v["Dice"] for k, v in s["mean"].items()}
    rows.append((name, per.get("1"), per.get("2"), s["foreground_mean"]["Dice"], seconds_per_it))
log = os.path.join(work, "logs", "nnunet_train.log")
nn = glob.glob(os.path.join(work, "nnunet_results", "Dataset004_*", "nnUNetTrainer_1epoch__*", "fold_0"))
if nn:
    times = []
    for f in glob.glob(os.path.join(nn[0], "training_log_*.txt")):
        times += [float(x) for x in re.findall(r"Epoch time: ([0-9.]+) s", open(f).read())]
    add("nnU-Net 2.8.1 3d_fullres, 1 epoch", os.path.join(nn[0], "validation", "summary.json"),
        f"{sum(times) / (250 * len(times)):.2f}" if times else "n/a")
def autosam_rate(fold):
    """Seconds per iteration from the fold's training log ("... 4 epochs x 40 iterations ..." and
    "epoch 1/4: ..., 148.1 s"); the epoch time includes its validation-loss batches, as nnU-Net's does."""
    times, iters = [], None
    for f in glob.glob(os.path.join(fold, "training_log_*.txt")):
        text = open(f).read()
        times += [float(t) for t in re.findall(r"epoch \d+/\d+: .*, ([0-9.]+) s$", text, re.M)]
        m = re.findall(r"epochs x (\d+) iterations", text)
        iters = int(m[-1]) if m else iters
    return f"{sum(times) / (len(times) * iters):.2f}" if times and iters else "n/a"
res = os.path.join(work, "results", "Dataset004_Hippocampus")
for results in [os.path.join(work, "results")] + sorted(glob.glob(os.path.join(work, "results_seed*"))):
    fold = os.path.join(results, "Dataset004_Hippocampus", "unet__autosamPlansGPU__3d", "fold_0")
    meta = os.path.join(fold, "metadata.json")
    seed = json.load(open(meta)).get("seed", "?") if os.path.isfile(meta) else "?"
    add(f"autosam unet, nnU-Net-sized plans, SGD, {nn_iters} it, seed {seed}",
        os.path.join(fold, "validation", "summary.json"), autosam_rate(fold))
for folder in sorted(glob.glob(os.path.join(res, "*__autosamPlans__3d"))):
    method = os.path.basename(folder).split("__")[0]
    fold = os.path.join(folder, "fold_0")
    label = f"autosam {method}, CPU plans"
    if method == "msam" and os.path.exists(os.path.join(work, "logs", "msam.tiny3d")):
        label += " (tiny3d, random init)"
    add(label, os.path.join(fold, "validation", "summary.json"), autosam_rate(fold))
if not rows:
    print("no validation results yet")
print(f"{'run':64s} {'anterior':>9s} {'posterior':>9s} {'fg mean':>8s} {'s/it':>6s}")
fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else "n/a"
for name, a, p, fg, rate in rows:
    print(f"{name:64s} {fmt(a):>9s} {fmt(p):>9s} {fmt(fg):>8s} {rate:>6s}")
# the goal of the nnU-Net comparison: Dice within 0.02 of nnU-Net's, at most 0.8x its seconds per iteration
nn_row = next((r for r in rows if r[0].startswith("nnU-Net")), None)
for same in (r for r in rows if "nnU-Net-sized" in r[0]):
    if nn_row and nn_row[3] is not None and same[3] is not None:
        ratio = (f"{float(same[4]) / float(nn_row[4]):.2f}x" if "n/a" not in (same[4], nn_row[4]) else "n/a")
        print(f"{same[0].split(', ')[-1]}: autosam vs nnU-Net, same plans and iterations: Dice {same[3] - nn_row[3]:+.4f}, "
              f"seconds per iteration {ratio}")
EOF
echo "results in $WORK"
