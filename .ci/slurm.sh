#!/usr/bin/env bash
# A real Slurm run of the shipped array script (deploy/slurm/rewardsds-batch.sbatch): starts a
# one-node cluster on this machine (munge, slurmctld, slurmd; two stand-in GPUs so two tasks
# run at once), submits the script over a small Tiny World manifest on the CPU, waits, then
# checks the library with `rewardsds batch --verify` (every entry once, finished with its
# config, its .glb passing the Khronos validator where installed, a complete index). Then a
# task is requeued mid-asset (`scontrol requeue`) and must resume from its checkpoint.
# Needs root (or sudo) and a built binary: BIN, default target/debug/rewardsds.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
BIN=$(realpath "${BIN:-target/debug/rewardsds}")
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  $SUDO apt-get install -y -qq --no-install-recommends slurm-wlm munge procps >/dev/null
fi

host=$(hostname -s)
cpus=$(nproc)
$SUDO mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
$SUDO tee /etc/slurm/slurm.conf >/dev/null <<CONF
ClusterName=rewardsds-ci
SlurmctldHost=$host
AuthType=auth/munge
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
GresTypes=gpu
NodeName=$host CPUs=$cpus Gres=gpu:2 State=UNKNOWN
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
# No GPU here: two device files stand in, so the script's --gres=gpu:1 schedules unchanged.
$SUDO tee /etc/slurm/gres.conf >/dev/null <<CONF
NodeName=$host Name=gpu File=/dev/null
NodeName=$host Name=gpu File=/dev/zero
CONF

# munge: its key comes with the package; it runs as its own user.
if [ ! -f /etc/munge/munge.key ]; then $SUDO mungekey --create 2>/dev/null || $SUDO create-munge-key; fi
$SUDO chown -R munge:munge /etc/munge /var/log/munge /var/lib/munge /run/munge 2>/dev/null || true
$SUDO chmod 755 /run/munge
pgrep -x munged >/dev/null || $SUDO runuser -u munge -- /usr/sbin/munged
pgrep -x slurmctld >/dev/null || $SUDO slurmctld
pgrep -x slurmd >/dev/null || $SUDO slurmd
for _ in $(seq 60); do
  state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 1
done
sinfo
[ "$state" = idle ] || { echo "slurm: node $host is '$state', not idle" >&2; $SUDO tail -20 /var/log/slurm/*.log >&2; exit 1; }

work=$(mktemp -d /tmp/rewardsds-slurm.XXXXXX)
chmod 777 "$work"
cat >"$work/props.toml" <<'TOML'
# Three Tiny World props, a few quick steps each: the run checks the scheduling and the library.
preset = "fast"
[overrides]
steps = 4
checkpoint_every = 2
[overrides.mesh]
resolution = 48
coarse_resolution = 24

[[asset]]
prompt = "a red cube on top of a blue sphere"

[[asset]]
prompt = "a green cone"

[[asset]]
prompt = "a white cylinder and a yellow cube"
TOML

# Two tasks, one stand-in GPU and one core each (the script asks 4 cores: a 2-core node has fewer).
sbatch --wait --array=0-1 --cpus-per-task=1 \
  --output="$work/task-%A_%a.log" \
  --export=ALL,REWARDSDS="$BIN",REWARDSDS_BACKEND=cpu,HF_HUB_OFFLINE=1 \
  deploy/slurm/rewardsds-batch.sbatch "$work/props.toml" "$work/library" \
  || { cat "$work"/task-*.log >&2; exit 1; }
grep -h "rewardsds-batch:\|: done\|batch:" "$work"/task-*.log
"$BIN" batch "$work/props.toml" --out "$work/library" --verify

# Requeue: a task requeued mid-asset (as on preemption or a node failure) comes back under
# the same worker id and resumes the asset from its checkpoint.
cat >"$work/long.toml" <<'TOML'
[[asset]]
prompt = "a purple torus"
name = "torus"
overrides = { steps = 16, checkpoint_every = 2, mesh = { resolution = 48, coarse_resolution = 24 } }
TOML
job=$(sbatch --parsable --array=0-0 --cpus-per-task=1 \
  --output="$work/requeue-%A_%a.log" \
  --export=ALL,REWARDSDS="$BIN",REWARDSDS_BACKEND=cpu,HF_HUB_OFFLINE=1 \
  deploy/slurm/rewardsds-batch.sbatch "$work/long.toml" "$work/library")
for _ in $(seq 300); do
  ls "$work/library/torus/checkpoint/" 2>/dev/null | grep -q '^step-' && break
  sleep 0.5
done
scontrol requeue "${job}_0"
# A requeued job is held about two minutes before it may start again: once it is pending,
# let it start now (until it does: the requeue may set its begin time after our update).
for _ in $(seq 120); do
  grep -q "restart 1" "$work"/requeue-*.log 2>/dev/null && break
  if [ "$(squeue -h -j "$job" -o %T 2>/dev/null)" = PENDING ]; then
    scontrol update JobId="${job}_0" StartTime=now 2>/dev/null || true
  fi
  sleep 1
done
for _ in $(seq 600); do
  [ -z "$(squeue -h -j "$job" 2>/dev/null)" ] && break
  sleep 1
done
cat "$work"/requeue-*.log
grep -q "restart 1" "$work"/requeue-*.log || { echo "slurm: the task was not requeued" >&2; exit 1; }
grep -q "\"worker\": \"slurm-${job}-0\"" "$work/library/torus/result.json"
if grep -q '"resumed_at_step": 0' "$work/library/torus/result.json"; then
  echo "slurm: the requeued task started the asset over instead of resuming it" >&2
  exit 1
fi
"$BIN" batch "$work/long.toml" --out "$work/library" --verify
echo "slurm run: $(($(date +%s) - start)) s"
