#!/usr/bin/env bash
# Start a real single-node SLURM on this machine for the tests (Debian's packages):
# munge with a key, a slurm.conf with this host at 127.0.0.1 (CPUs = this machine's),
# slurmctld and slurmd. Idempotent: does nothing when the node already answers.
# Needs root and apt-get; prints why and exits 3 when it cannot (the tests skip then).
set -euo pipefail

if sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mix|alloc'; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "start_local_slurm: needs root" >&2; exit 3
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
  if ! command -v apt-get >/dev/null; then
    echo "start_local_slurm: SLURM is not installed and apt-get is missing" >&2; exit 3
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

host=$(hostname -s)
cpus=$(nproc)
conf_dir=/etc/slurm
mkdir -p "$conf_dir" /var/spool/megatron_hds_slurmctld /var/spool/megatron_hds_slurmd /run/munge /var/log
cat > "$conf_dir/slurm.conf" <<CONF
ClusterName=megatron-hds-test
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
StateSaveLocation=/var/spool/megatron_hds_slurmctld
SlurmdSpoolDir=/var/spool/megatron_hds_slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurmctld.log
SlurmdLogFile=/var/log/slurmd.log
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

if [[ ! -s /etc/munge/munge.key ]]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=128 status=none
fi
if id munge >/dev/null 2>&1; then
  chown -R munge:munge /etc/munge /run/munge
  chmod 0400 /etc/munge/munge.key
fi
if ! pgrep -x munged >/dev/null; then
  if id munge >/dev/null 2>&1; then runuser -u munge -- /usr/sbin/munged; else /usr/sbin/munged --force; fi
fi
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 1 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mix|alloc'; then
    exit 0
  fi
  sleep 1
done
echo "start_local_slurm: the node did not become idle; sinfo says:" >&2
sinfo >&2 || true
tail -20 /var/log/slurmctld.log /var/log/slurmd.log >&2 || true
exit 1
