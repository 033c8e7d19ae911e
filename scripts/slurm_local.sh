#!/usr/bin/env bash
# A real single-node Slurm (munged + slurmctld + slurmd, started without systemd) with 4 fake GPUs, for the tests
# of job arrays, requeue and per-task CUDA_VISIBLE_DEVICES.  Needs root.
#   bash scripts/slurm_local.sh start|stop|status
# All state (config copies, munge key and socket, spool, logs, pid files) lives in ${DEEPLAB_SLURM_DIR:-/tmp/deeplab-slurm}.
# slurm.conf and gres.conf are also written to /etc/slurm/ (where Debian's Slurm reads them), so plain sbatch/squeue/
# scontrol work from any process; an /etc/slurm/slurm.conf that this script did not write is never overwritten.
# Jobs get the submitter's environment (sbatch's default --export=ALL), PATH included.
set -euo pipefail
DIR="${DEEPLAB_SLURM_DIR:-/tmp/deeplab-slurm}"
MARK="# Written by deeplab_lightning scripts/slurm_local.sh"
HOST="$(hostname -s)"

pid_alive() { local p; p="$(cat "$DIR/run/$1.pid" 2>/dev/null)" && [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
# Up = our three daemons alive and the node usable (idle, or busy with jobs).
is_up() {
  pid_alive munged && pid_alive slurmctld && pid_alive slurmd || return 1
  sinfo -h -n "$HOST" -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)'
}

stop_daemons() {
  # Cancel leftover jobs first so that no job step outlives slurmd, then stop the daemons by their pid files.
  if pid_alive slurmctld; then squeue -h -o %i 2>/dev/null | xargs -r scancel 2>/dev/null || true; sleep 1; fi
  local name p i
  for name in slurmd slurmctld munged; do
    pid_alive "$name" || { rm -f "$DIR/run/$name.pid"; continue; }
    p="$(cat "$DIR/run/$name.pid")"
    kill "$p"
    for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$p" 2>/dev/null && kill -9 "$p"
    rm -f "$DIR/run/$name.pid"
  done
  return 0
}

start() {
  if is_up; then echo "Slurm is already running (node $HOST, state in $DIR)"; return 0; fi
  if [ "$(id -u)" != 0 ]; then
    echo "error: scripts/slurm_local.sh start must run as root (it installs packages and starts munged/slurmctld/slurmd)" >&2
    exit 1
  fi
  # 1. Install Debian's Slurm and MUNGE when missing.
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
     || ! command -v munged >/dev/null; then
    echo "Installing slurmctld slurmd slurm-client munge..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  fi
  # 2. Refuse to replace a Slurm configuration that is not ours; clean up a half-started previous run.
  if [ -e /etc/slurm/slurm.conf ] && ! grep -qxF "$MARK" /etc/slurm/slurm.conf; then
    echo "error: /etc/slurm/slurm.conf exists and was not written by $0; not overwriting it" >&2
    exit 1
  fi
  stop_daemons
  mkdir -p "$DIR"/{etc,munge,state,spool,log,run}
  chmod 755 "$DIR/munge"  # others may talk to the socket; the key itself is 0400
  # 3. Our own MUNGE key and socket (in $DIR), so a system munged, if any, is left alone.
  if [ ! -s "$DIR/munge/munge.key" ]; then
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  fi
  chmod 400 "$DIR/munge/munge.key"
  # 4. The configuration: one node with max(nproc, 4) CPUs (so that 4 one-GPU tasks can run at once; override with
  # DEEPLAB_SLURM_CPUS) and 4 fake GPUs (/dev/tty0..3, which only give
  # each task its own CUDA_VISIBLE_DEVICES index); short timeouts so that requeue and cleanup take seconds.
  local mem cpus
  mem="$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')"
  cpus="${DEEPLAB_SLURM_CPUS:-$(( $(nproc) > 4 ? $(nproc) : 4 ))}"
  cat > "$DIR/etc/slurm.conf" <<EOF
$MARK
# (state in $DIR; see that script)
ClusterName=deeplab
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits cred_expire+1 s before it may start again (default 120 s).
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=5
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
SchedulerParameters=sched_interval=2,bf_interval=2
GresTypes=gpu
JobRequeue=1
ReturnToService=2
KillWait=2
MinJobAge=5
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
  printf '%s\nAutoDetect=off\nNodeName=%s Name=gpu File=/dev/tty[0-3]\n' "$MARK" "$HOST" > "$DIR/etc/gres.conf"
  mkdir -p /etc/slurm
  cp "$DIR/etc/slurm.conf" "$DIR/etc/gres.conf" /etc/slurm/
  # 5. Start the daemons (each forks into the background and writes its pid file in $DIR/run); -c: fresh job state.
  munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" \
    || fail "munged did not start"
  slurmctld -c || fail "slurmctld did not start"
  slurmd || fail "slurmd did not start"
  # 6. Wait until the node is idle (fail at once if a daemon died).
  local i
  for i in $(seq 60); do
    if is_up; then echo "Slurm is up (node $HOST, partition debug, 4 fake GPUs; state and logs in $DIR)"; return 0; fi
    sleep 1
    [ "$i" -lt 3 ] || { pid_alive munged && pid_alive slurmctld && pid_alive slurmd; } || fail "a Slurm daemon exited"
  done
  fail "Slurm did not come up within 60 s"
}

# Print the error, sinfo and the daemons' log tails, stop what was started, exit 1.
fail() {
  echo "error: $1; sinfo: $(sinfo -h -o '%N %T %E' 2>&1 || true)" >&2
  local f
  for f in "$DIR"/log/*.log; do echo "--- tail of $f" >&2; tail -n 20 "$f" >&2; done
  stop_daemons >/dev/null 2>&1
  exit 1
}

case "${1:-}" in
  start) start ;;
  stop) stop_daemons; echo "Slurm stopped (packages and $DIR left in place)" ;;
  status)
    if is_up; then echo "Slurm is up:"; sinfo; else echo "Slurm is not running"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
