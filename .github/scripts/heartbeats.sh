# shellcheck shell=bash
# Heartbeats for the lifetime of the shell that sources this file (a workflow step).
#
#   source .github/scripts/heartbeats.sh
#   start_heartbeats     # callback.sh heartbeat-loop in the background, plus traps
#   ...the work...       # run long commands as `cmd & wait $!` so a signal is handled at once
#
# The loop is started in the same step as the work it reports on: act ends a step's background
# processes when the step ends (GitHub's runner only when the job ends), so a loop started in a
# step of its own would send nothing under act. On every exit of the step (success, failure,
# SIGINT or SIGTERM from a cancellation or a timeout) the EXIT trap stops the loop and waits for
# it, so no heartbeat is sent after the step, hence none after the terminal callback. Should the
# step be killed outright, the loop notices its parent is gone before its next heartbeat.
#
# Environment: that of callback.sh (CALLBACK_URL, CALLBACK_SECRET, JOB_ID, ...) and
# HEARTBEAT_INTERVAL_S (default 60).

JOBTRAIL_SCRIPTS=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
heartbeat_pid=""

stop_heartbeats() {
  if [[ -n $heartbeat_pid ]]; then
    kill -TERM "$heartbeat_pid" 2>/dev/null || true
    wait "$heartbeat_pid" 2>/dev/null || true
    heartbeat_pid=""
  fi
}

# SIGINT/SIGTERM: end the step's other background work too, then exit (the EXIT trap follows).
_heartbeats_on_signal() {
  local pids
  pids=$(jobs -p)
  if [[ -n $pids ]]; then
    # shellcheck disable=SC2086 # one pid per word
    kill -TERM $pids 2>/dev/null || true
  fi
  exit "$1"
}

start_heartbeats() {
  HEARTBEAT_PARENT_PID=$$ "$JOBTRAIL_SCRIPTS/callback.sh" heartbeat-loop &
  heartbeat_pid=$!
  trap stop_heartbeats EXIT
  trap '_heartbeats_on_signal 130' INT
  trap '_heartbeats_on_signal 143' TERM
}
