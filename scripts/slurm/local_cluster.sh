#!/usr/bin/env bash
# A real one-node SLURM cluster on localhost, for tests and CI (submitit, sbatch, srun).
#
#   scripts/slurm/local_cluster.sh start    install slurm-wlm + munge if missing, start munged,
#                                           slurmctld and slurmd, wait until the node is idle
#   scripts/slurm/local_cluster.sh stop     cancel leftover jobs, stop the three daemons
#   scripts/slurm/local_cluster.sh status   exit 0 if the cluster answers and the node is usable
#
# State, logs and pid files live in $SMALLMED_SLURM_DIR (default /tmp/smallmed-slurm).
# The config is written to /etc/slurm/slurm.conf, where Debian's clients look by default, so that
# sbatch/squeue/scancel started by other processes (submitit) need no SLURM_CONF; a foreign file
# found there is kept once as slurm.conf.before-smallmed. Daemons run as root, without cgroups
# (proctrack/linuxproc, task/none) and without accounting, so sacct fails: submitit then sees every
# job as UNKNOWN and only knows a task is done from its result file (a cancelled one never is);
# `squeue -t all` still shows final states for MinJobAge (300 s). KillWait=5 makes scancel quick.
# Exit codes: 0 ok, 1 failure, 3 cannot run here (not root and the cluster is not up): tests skip on 3.
set -euo pipefail

DIR=${SMALLMED_SLURM_DIR:-/tmp/smallmed-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by smallmed scripts/slurm/local_cluster.sh"
export DEBIAN_FRONTEND=noninteractive PATH="$PATH:/usr/sbin:/sbin"

die() { echo "local_cluster.sh: $1" >&2; exit "${2:-1}"; }
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_name() {
  local n; n=$(hostname -s 2>/dev/null || true)
  if [[ -n $n ]] && getent hosts "$n" >/dev/null; then echo "$n"; else echo localhost; fi
}

node_ok() { sinfo -h -o %T 2>/dev/null | grep -qxE '(idle|mixed|allocated|completing)'; }

status() { command -v sinfo >/dev/null && timeout 5 sinfo -h >/dev/null 2>&1 && node_ok; }

install() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
  [[ $EUID -eq 0 ]] || die "SLURM (slurm-wlm, munge) is not installed and this is not root: cannot make a local cluster" 3
  local pkgs=(slurm-wlm munge) log="$DIR/apt.log"
  apt-get install -y -q "${pkgs[@]}" >"$log" 2>&1 \
    || { apt-get update -q >>"$log" 2>&1 && apt-get install -y -q "${pkgs[@]}" >>"$log" 2>&1; } \
    || die "apt-get install ${pkgs[*]} failed, see $log"
}

start_munge() {
  alive "$DIR/munge/munged.pid" && return
  mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge "$DIR/munge"
  [[ -s /etc/munge/munge.key ]] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge "$DIR/munge"
  chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
  runuser -u munge -- munged --pid-file="$DIR/munge/munged.pid"
}

write_conf() {
  local node=$1 mem
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  mem=$(( ${mem:-1024} * 95 / 100 ))  # a bit below what slurmd sees, or the node drains
  mkdir -p /etc/slurm
  if [[ -e $CONF && ! -e $CONF.before-smallmed ]] && ! grep -qF "$MARK" "$CONF"; then
    cp -p "$CONF" "$CONF.before-smallmed"
  fi
  cat >"$CONF" <<EOF
$MARK
ClusterName=smallmed
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=5
MailProg=/bin/true
SlurmdParameters=config_overrides
NodeName=$node NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  if status; then echo "SLURM already up ($CONF)"; sinfo; return; fi
  if [[ $EUID -ne 0 ]]; then
    command -v slurmctld >/dev/null || install  # exits 3
    die "not root: cannot start the local SLURM cluster" 3
  fi
  mkdir -p "$DIR/state" "$DIR/spool"
  chmod 0755 "$DIR"
  install
  local node; node=$(node_name)
  start_munge
  if ! alive "$DIR/slurmctld.pid" || ! alive "$DIR/slurmd.pid"; then write_conf "$node"; fi
  alive "$DIR/slurmctld.pid" || slurmctld
  alive "$DIR/slurmd.pid" || slurmd -N "$node"
  local state
  for _ in $(seq 60); do
    node_ok && { echo "SLURM up, config $CONF, logs in $DIR"; sinfo; return; }
    state=$(sinfo -h -o %T 2>/dev/null || true)
    if [[ $state =~ ^(down|drain) ]]; then scontrol update nodename="$node" state=resume 2>/dev/null || true; fi
    sleep 1
  done
  die "node not idle after 60 s (sinfo: '$(sinfo -h -o '%T %E' 2>&1 || true)'); see $DIR/*.log"
}

stop_daemon() {  # pid file, name
  alive "$1" || { rm -f "$1"; return; }
  local pid; pid=$(cat "$1")
  kill "$pid"
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && { echo "$2 did not stop, killing it" >&2; kill -9 "$pid"; }
  rm -f "$1"
}

stop() {
  if alive "$DIR/slurmctld.pid" && [[ -n $(squeue -h 2>/dev/null) ]]; then
    scancel --partition=debug 2>/dev/null || true
    for _ in $(seq 30); do [[ -z $(squeue -h 2>/dev/null) ]] && break; sleep 1; done
  fi
  stop_daemon "$DIR/slurmd.pid" slurmd
  stop_daemon "$DIR/slurmctld.pid" slurmctld
  stop_daemon "$DIR/munge/munged.pid" munged
  echo "SLURM stopped"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $0 start|stop|status" 2 ;;
esac
