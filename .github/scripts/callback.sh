#!/usr/bin/env bash
# Send one signed job callback to jobtrail, or heartbeats until stopped.
#
#   callback.sh STATUS [MESSAGE]   one callback: queued, provisioning, running, heartbeat,
#                                  succeeded, failed or cancelled
#   callback.sh heartbeat-loop     a heartbeat every HEARTBEAT_INTERVAL_S seconds until it gets
#                                  SIGTERM (see heartbeats.sh, which starts and stops it)
#
# Environment:
#   CALLBACK_URL           the full endpoint URL, e.g. https://jobtrail.example/api/webhooks/github
#   CALLBACK_SECRET        the shared secret: whsec_<base64> is used as its decoded bytes, any
#                          other secret as its literal UTF-8 bytes
#   JOB_ID                 the job the callback is about
#   RUN_ID, RUN_ATTEMPT    optional; sent as JSON integers (github.run_id, github.run_attempt)
#   AGENT_ID, REGION       optional; sent when non-empty
#   CALLBACK_ID            optional webhook-id (default: msg_ + 128 random bits); every retry of
#                          this callback keeps it, so the server stores the callback once
#   CALLBACK_MAX_ATTEMPTS  default 5 (heartbeats: HEARTBEAT_MAX_ATTEMPTS, default 1: the next
#                          heartbeat replaces a lost one)
#   CALLBACK_RETRY_DELAY_S first backoff in whole seconds, doubled per retry, capped at 30; default 2
#   CALLBACK_TIMEOUT_S     per-attempt time limit of curl, default 10 (heartbeats: at most 5)
#   CALLBACK_TERMINAL_MARKER  optional file; the first terminal callback (succeeded, failed,
#                          cancelled) creates it, and any later terminal callback of the same run
#                          is skipped, so a run sends exactly one
#   HEARTBEAT_INTERVAL_S   default 60
#   HEARTBEAT_PARENT_PID   heartbeat-loop stops when this process is gone (default: its parent)
#
# Signing is Standard Webhooks: webhook-id, webhook-timestamp (unix seconds) and
# webhook-signature "v1,<base64 HMAC-SHA256 of id.timestamp.body>". Each retry is re-signed with
# a fresh timestamp. 2xx succeeds; 408, 429, 5xx and connection errors are retried with
# exponential backoff; any other answer (401 above all) fails at once: retrying cannot fix it.
#
# Exit: 0 delivered (or a terminal callback already sent), 1 refused or given up, 2 usage.
# Uses bash, openssl, curl and coreutils only. The secret is never printed.
set -euo pipefail

readonly PROG="callback.sh"

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
usage() {
  log "$*"
  log "usage: $PROG STATUS [MESSAGE] | $PROG heartbeat-loop"
  exit 2
}

# A JSON string literal: backslash, double quote and every control character escaped. Other
# bytes (UTF-8 included) pass through unchanged. Bash strings cannot hold NUL.
json_string() {
  local s=$1 i hex ch
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  s=${s//$'\b'/\\b}
  s=${s//$'\f'/\\f}
  for ((i = 1; i < 32; i++)); do
    printf -v hex '%02x' "$i"
    printf -v ch '%b' "\\x$hex"
    s=${s//"$ch"/\\u00$hex}
  done
  printf -v ch '\x7f'
  s=${s//"$ch"/\\u007f}
  printf '"%s"' "$s"
}

# The HMAC key as hex: the base64 after whsec_ decoded (when it is valid base64, as the server
# decides), else the secret's own bytes.
key_hex() {
  local secret=$1 encoded
  encoded=${secret#whsec_}
  if [[ $secret == whsec_* && $encoded =~ ^[A-Za-z0-9+/]*={0,2}$ && $((${#encoded} % 4)) -eq 0 ]]; then
    printf '%s' "$encoded" | base64 -d | od -An -v -tx1 | tr -d ' \n'
  else
    printf '%s' "$secret" | od -An -v -tx1 | tr -d ' \n'
  fi
}

# base64 HMAC-SHA256 of stdin. -binary | base64 reads the same on OpenSSL 1.1 and 3.
hmac_base64() {
  openssl dgst -sha256 -mac HMAC -macopt "hexkey:$1" -binary | base64 | tr -d '\n'
}

random_id() {
  printf 'msg_%s' "$(head -c 16 /dev/urandom | od -An -v -tx1 | tr -d ' \n')"
}

is_uint() { [[ $1 =~ ^[0-9]{1,16}$ ]]; }

build_body() {
  local status=$1 message=$2 body
  body="{\"job_id\":$(json_string "$JOB_ID"),\"status\":$(json_string "$status")"
  if [[ -n ${RUN_ID:-} ]]; then
    body+=",\"run_id\":$((10#$RUN_ID))"
  fi
  if [[ -n ${RUN_ATTEMPT:-} ]]; then
    body+=",\"run_attempt\":$((10#$RUN_ATTEMPT))"
  fi
  if [[ -n ${AGENT_ID:-} ]]; then
    body+=",\"agent_id\":$(json_string "$AGENT_ID")"
  fi
  if [[ -n ${REGION:-} ]]; then
    body+=",\"region\":$(json_string "$REGION")"
  fi
  if [[ -n $message ]]; then
    body+=",\"message\":$(json_string "$message")"
  fi
  body+=",\"timestamp\":\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"}"
  printf '%s' "$body"
}

check_env() {
  [[ -n ${CALLBACK_URL:-} ]] || usage "CALLBACK_URL is not set"
  [[ -n ${CALLBACK_SECRET:-} ]] || usage "CALLBACK_SECRET is not set"
  [[ -n ${JOB_ID:-} ]] || usage "JOB_ID is not set"
  if [[ -n ${RUN_ID:-} ]] && ! is_uint "$RUN_ID"; then usage "RUN_ID must be an integer"; fi
  if [[ -n ${RUN_ATTEMPT:-} ]] && ! is_uint "$RUN_ATTEMPT"; then
    usage "RUN_ATTEMPT must be an integer"
  fi
  return 0
}

# send STATUS MESSAGE MAX_ATTEMPTS TIMEOUT_S: one callback, retried; returns 0, 1.
send() {
  local status=$1 message=$2 max_attempts=$3 timeout_s=$4
  local body id key attempt=1 delay ts sig code answer retry_after
  body=$(build_body "$status" "$message")
  id=${CALLBACK_ID:-$(random_id)}
  key=$(key_hex "$CALLBACK_SECRET")
  delay=${CALLBACK_RETRY_DELAY_S:-2}
  is_uint "$delay" || usage "CALLBACK_RETRY_DELAY_S must be a whole number of seconds"
  while :; do
    ts=$(date +%s)
    sig=$(printf '%s' "$id.$ts.$body" | hmac_base64 "$key")
    code=$(printf '%s' "$body" | curl --silent --show-error --output "$tmp/answer" \
      --dump-header "$tmp/headers" --write-out '%{http_code}' \
      --connect-timeout 5 --max-time "$timeout_s" \
      --header 'Content-Type: application/json' \
      --header "webhook-id: $id" \
      --header "webhook-timestamp: $ts" \
      --header "webhook-signature: v1,$sig" \
      --data-binary @- -- "$CALLBACK_URL" 2>"$tmp/curl-error") || true
    answer=$(head -c 300 "$tmp/answer" 2>/dev/null || true)
    [[ -n $answer ]] || answer=$(head -c 300 "$tmp/curl-error" 2>/dev/null || true)
    answer=${answer//$'\n'/ }
    code=${code:-000}
    case $code in
      2??)
        log "attempt $attempt/$max_attempts: $status $id -> HTTP $code $answer"
        return 0
        ;;
      000 | 408 | 429 | 5??) ;;
      *)
        log "attempt $attempt/$max_attempts: $status $id -> HTTP $code $answer; not retried"
        return 1
        ;;
    esac
    if ((attempt >= max_attempts)); then
      log "attempt $attempt/$max_attempts: $status $id -> HTTP $code $answer; giving up"
      return 1
    fi
    retry_after=$(tr -d '\r' <"$tmp/headers" 2>/dev/null |
      sed -n 's/^[Rr][Ee][Tt][Rr][Yy]-[Aa][Ff][Tt][Ee][Rr]: *\([0-9][0-9]*\) *$/\1/p' |
      tail -n 1) || true
    if [[ -n $retry_after ]] && ((retry_after > delay && retry_after <= 30)); then
      delay=$retry_after
    fi
    log "attempt $attempt/$max_attempts: $status $id -> HTTP $code $answer; retrying in ${delay}s"
    sleep "$delay"
    attempt=$((attempt + 1))
    delay=$((delay * 2 > 30 ? 30 : delay * 2))
  done
}

callback() {
  local status=$1 message=${2:-} marker=${CALLBACK_TERMINAL_MARKER:-}
  case $status in
    queued | provisioning | running | heartbeat) marker= ;;
    succeeded | failed | cancelled)
      if [[ -n $marker && -e $marker ]]; then
        log "a terminal callback ($(head -c 64 "$marker")) was already sent in this run;" \
          "not sending $status"
        return 0
      fi
      ;;
    *) usage "unknown status: $status" ;;
  esac
  check_env
  local max_attempts=${CALLBACK_MAX_ATTEMPTS:-5}
  if ! is_uint "$max_attempts" || ((max_attempts < 1)); then
    usage "CALLBACK_MAX_ATTEMPTS must be >= 1"
  fi
  if [[ -n $marker ]]; then
    # Claimed before sending: a run never sends a second terminal status, even if this one is
    # interrupted or refused.
    printf '%s' "$status" >"$marker"
  fi
  send "$status" "$message" "$max_attempts" "${CALLBACK_TIMEOUT_S:-10}"
}

heartbeat_loop() {
  local interval=${HEARTBEAT_INTERVAL_S:-60} parent=${HEARTBEAT_PARENT_PID:-$PPID}
  local count=0 sleeper="" timeout reason="signalled"
  if ! is_uint "$interval" || ((interval < 1)); then
    usage "HEARTBEAT_INTERVAL_S must be >= 1"
  fi
  check_env
  stopping=0
  # SIGTERM ends the wait at once; a heartbeat being sent finishes first (at most 5 s), so none
  # is left in flight once this process has exited.
  trap 'stopping=1; [[ -z $sleeper ]] || kill "$sleeper" 2>/dev/null || true' TERM INT HUP
  log "heartbeat every ${interval}s for job $JOB_ID"
  while ((!stopping)); do
    sleep "$interval" &
    sleeper=$!
    wait "$sleeper" || true
    sleeper=""
    ((!stopping)) || break
    # The step that started us is gone: killed without a chance to stop us.
    if ! kill -0 "$parent" 2>/dev/null; then
      reason="process $parent is gone"
      break
    fi
    count=$((count + 1))
    timeout=${CALLBACK_TIMEOUT_S:-5}
    ((timeout <= 5)) || timeout=5
    CALLBACK_ID="" send heartbeat "" "${HEARTBEAT_MAX_ATTEMPTS:-1}" "$timeout" ||
      log "heartbeat $count not delivered; the next one replaces it"
  done
  log "heartbeats stopped ($reason) after $count"
}

main() {
  (($# >= 1)) || usage "no status given"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  case $1 in
    heartbeat-loop)
      (($# == 1)) || usage "heartbeat-loop takes no arguments"
      heartbeat_loop
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      ;;
    *)
      (($# <= 2)) || usage "too many arguments"
      callback "$1" "${2:-}"
      ;;
  esac
}

main "$@"
