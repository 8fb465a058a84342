#!/bin/sh
# Stands in for the k3s binary in the boot test: records how it was started and what it
# would read, then stays up like a server process would.
log=/var/log/k3s-standin.log
{
  printf 'K3S-STANDIN argv=%s\n' "$*"
  printf 'K3S-STANDIN name=%s\n' "$(basename "$0")"
  if [ -f /etc/rancher/k3s/config.yaml ]; then
    sed 's/^/K3S-STANDIN config| /' /etc/rancher/k3s/config.yaml
  else
    echo 'K3S-STANDIN config-missing'
  fi
  for f in /var/lib/rancher/k3s/agent/images/*; do
    [ -e "$f" ] && printf 'K3S-STANDIN image=%s size=%s\n' "$(basename "$f")" "$(wc -c <"$f")"
  done
  # The manifests k3s would apply: each file's size and digest, and the lines naming the
  # VIP, its interface and the GitOps repository, as a reader would grep for them.
  manifests=/var/lib/rancher/k3s/server/manifests
  for f in "$manifests"/*; do
    [ -f "$f" ] && printf 'K3S-STANDIN manifest=%s size=%s sha256=%s\n' \
      "$(basename "$f")" "$(wc -c <"$f")" "$(sha256sum <"$f" | cut -d' ' -f1)"
  done
  if [ -d "$manifests" ]; then
    grep -h --no-group-separator -A1 -E -e '- name: (address|vip_interface)$' -e 'repoURL:' \
      "$manifests"/* | sed 's/^/K3S-STANDIN manifest-line| /'
  fi
  echo 'K3S-STANDIN ready'
} >"$log.tmp" 2>&1
mv "$log.tmp" "$log"
cat "$log" >/dev/console 2>/dev/null || true
# The server unit is Type=notify: report readiness from the main process itself (exec keeps
# the PID, which systemd's default NotifyAccess=main requires), then stay up.
if [ -n "${NOTIFY_SOCKET:-}" ] && command -v python3 >/dev/null 2>&1; then
  exec python3 -c '
import os, socket, time
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(addr)
s.sendall(b"READY=1")
s.close()
while True:
    time.sleep(3600)
'
fi
exec sleep infinity
