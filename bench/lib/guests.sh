# shellcheck shell=bash
# Shell functions the benchmarks that drive guests share: logging,
# medians, free ports, typing on a guest's serial console, and waiting for
# a quiet machine. Source it after setting WORK (the run's work directory)
# and QUIET_WAIT (1: wait for other builds and QEMUs before measuring).

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
free_port() { python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"; }

# Runs a shell command line on a guest's serial console (a unix socket of
# QEMU's) and prints what the guest answered, up to an end marker.
# console SOCKET TIMEOUT_S COMMAND
console() {
  python3 - "$@" <<'EOF'
import random, socket, sys, time
path, timeout, cmd = sys.argv[1], float(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
s.settimeout(0.2)
def read():
    try:
        return s.recv(65536).decode(errors="replace")
    except socket.timeout:
        return ""
t = time.time() + 0.3
while time.time() < t:  # what the guest printed before
    read()
n = random.randrange(10**6, 10**7)
# The typed line holds $((n+1)); only the answer holds the number.
s.sendall(f"{cmd}; echo END-$(({n}+1))\n".encode())
sent = time.time()
out, end, deadline = "", f"END-{n + 1}", sent + timeout
while end not in out:
    if time.time() > deadline:
        sys.exit(f"no answer from {path} to {cmd!r} within {timeout:.0f} s: {out[-2000:]}")
    out += read()
print(out)
print(f"HOST-ELAPSED {time.time() - sent:.3f}")
EOF
}

# Waits until the guest's shell answers on its console (the shell starts
# after "SHEAF-GUEST ready").
console_ready() {
  local sock=$1 _
  for _ in $(seq 60); do
    if [[ -S $sock ]] && console "$sock" 3 'echo RDY' 2>/dev/null | grep END- >/dev/null; then return 0; fi
    sleep 1
  done
  echo "the console $sock does not answer" >&2
  return 1
}

# Builds, test runs, and QEMUs that are not this run's.
heavy() {
  local p
  # (pgrep matches at most 15 characters of a name: one name per call.)
  for p in cargo cargo-nextest rustc; do pgrep -x "$p" >/dev/null && return 0; done
  for p in $(pgrep -f '^qemu-system'); do
    [[ $(tr '\0' ' ' 2>/dev/null < "/proc/$p/cmdline") == *"$WORK/"* ]] || return 0
  done
  return 1
}
wait_quiet() {
  [[ $QUIET_WAIT == 1 ]] || return 0
  if heavy; then
    log "waiting for other cargo/rustc/nextest/QEMU processes to end before measuring"
    while heavy; do sleep 10; done
    sleep 5
  fi
}
