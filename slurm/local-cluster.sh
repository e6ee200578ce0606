#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the tests and for trying sweeps:
#   slurm/local-cluster.sh start    # prints the `export SLURM_CONF=...` line for sbatch/squeue/sweep
#   slurm/local-cluster.sh status
#   slurm/local-cluster.sh stop
# Needs Debian's slurm-wlm and munge (apt-get install -y slurm-wlm munge) and root. Everything lives in
# one folder ($QSATTN_SLURM_DIR, default /tmp/qsattn-slurm): no cgroups, no accounting, no systemd,
# non-default ports ($QSATTN_SLURM_PORT and the next one). Recipe: shared/notes/slurm-local.md.
set -euo pipefail

DIR=${QSATTN_SLURM_DIR:-/tmp/qsattn-slurm}
PORT=${QSATTN_SLURM_PORT:-16817}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)

die() { echo "local-cluster: $*" >&2; exit 1; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

need() {
    for prog in slurmctld slurmd munged sinfo; do
        command -v "$prog" >/dev/null 2>&1 || [ -x "/usr/sbin/$prog" ] \
            || die "$prog not found: install the packages with  apt-get install -y slurm-wlm munge"
    done
    [ "$(id -u)" = 0 ] || die "must run as root (slurmd runs jobs as their users)"
}

write_conf() {
    local cpus mem_mb
    cpus=$(nproc)
    mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    cat > "$CONF" <<CONF
ClusterName=qsattn-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=2
MinJobAge=300
SchedulerParameters=defer_batch=0
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
    [ -f /etc/munge/munge.key ] || die "/etc/munge/munge.key is missing (reinstall munge, or run mungekey)"
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged
    pgrep -u munge -n munged > "$DIR/munged.pid" || true   # ours: stop kills it
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.25; done
    die "munged did not start"
}

start() {
    need
    mkdir -p "$DIR"
    if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid"; then
        echo "already running; export SLURM_CONF=$CONF"; return
    fi
    write_conf
    start_munge
    export SLURM_CONF=$CONF
    /usr/sbin/slurmctld -i -f "$CONF" || die "slurmctld did not start; see $DIR/log/slurmctld.log"
    /usr/sbin/slurmd -f "$CONF" || die "slurmd did not start; see $DIR/log/slurmd.log"
    for _ in $(seq 60); do
        if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            echo "SLURM is up (node $HOST, partition debug, $(nproc) CPUs)."
            echo "export SLURM_CONF=$CONF"
            return
        fi
        sleep 0.5
    done
    sinfo >&2 || true
    die "the node did not become idle; logs in $DIR/log"
}

stop() {
    for daemon in slurmd slurmctld; do
        if alive "$DIR/$daemon.pid"; then kill "$(cat "$DIR/$daemon.pid")"; fi
    done
    for daemon in slurmd slurmctld; do
        for _ in $(seq 20); do alive "$DIR/$daemon.pid" || break; sleep 0.25; done
        rm -f "$DIR/$daemon.pid"
    done
    if alive "$DIR/munged.pid"; then kill "$(cat "$DIR/munged.pid")"; rm -f "$DIR/munged.pid"; fi
    echo "stopped"
}

status() {
    if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid"; then
        SLURM_CONF=$CONF sinfo
        SLURM_CONF=$CONF squeue
        echo "export SLURM_CONF=$CONF"
    else
        echo "not running"; return 1
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
