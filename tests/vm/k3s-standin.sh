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
  echo 'K3S-STANDIN ready'
} >"$log.tmp" 2>&1
mv "$log.tmp" "$log"
cat "$log" >/dev/console 2>/dev/null || true
# k3s units are Type=notify; tell systemd the service is up when possible.
systemd-notify --ready 2>/dev/null || true
exec sleep infinity
