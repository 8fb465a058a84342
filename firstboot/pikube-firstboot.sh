#!/bin/sh
# pikube first boot, for images without cloud-init.
#
# The build writes the node's identity into the root filesystem; what needs the running
# system is done here, from data files the build left in /etc/pikube:
#   admin-user               login name of the admin account
#   authorized_keys          its SSH public keys
#   ssh_host_ed25519_key     the node's SSH host key (and .pub), published in known_hosts
# Nothing in this script is generated: it reads those files and checks what it reads.
# Running it again changes nothing.
set -eu

DATA=/etc/pikube
SSH_DIR=/etc/ssh

log() {
    echo "pikube-firstboot: $*" >&2
}

fail() {
    log "$*"
    exit 1
}

[ -r "$DATA/admin-user" ] || fail "$DATA/admin-user is missing: nothing to do"
user=$(head -n 1 "$DATA/admin-user")
case "$user" in
    '' | -* | *[!a-z0-9-]*)
        fail "$DATA/admin-user holds '$user', which is not a login name (a-z, 0-9, '-')"
        ;;
    root)
        fail "$DATA/admin-user names root; refusing"
        ;;
esac

# The admin user: a normal account in the sudo group, no password (login by key only).
if ! getent passwd "$user" >/dev/null; then
    if getent group sudo >/dev/null; then
        useradd -m -s /bin/bash -G sudo -c "pikube administrator" "$user"
    else
        log "group sudo does not exist; $user gets sudo through /etc/sudoers.d/90-pikube only"
        useradd -m -s /bin/bash -c "pikube administrator" "$user"
    fi
    log "created user $user"
fi
home=$(getent passwd "$user" | cut -d: -f6)
group=$(id -gn "$user")
[ -n "$home" ] && [ -d "$home" ] || fail "home directory of $user ('$home') does not exist"

if [ -r "$DATA/authorized_keys" ]; then
    install -d -m 0700 -o "$user" -g "$group" "$home/.ssh"
    install -m 0600 -o "$user" -g "$group" "$DATA/authorized_keys" "$home/.ssh/authorized_keys"
    log "installed $(grep -c . "$DATA/authorized_keys") SSH key(s) for $user"
fi

# The images ship a well-known root password: lock it (key login as root is off too).
passwd -l root >/dev/null
log "locked the root password"

# Keep the host key the build published; the OS's own first run may have replaced it.
restart_ssh=no
if [ -r "$DATA/ssh_host_ed25519_key" ] && [ -r "$DATA/ssh_host_ed25519_key.pub" ]; then
    if ! cmp -s "$DATA/ssh_host_ed25519_key" "$SSH_DIR/ssh_host_ed25519_key" ||
        ! cmp -s "$DATA/ssh_host_ed25519_key.pub" "$SSH_DIR/ssh_host_ed25519_key.pub"; then
        install -d -m 0755 "$SSH_DIR"
        install -m 0600 -o root -g root "$DATA/ssh_host_ed25519_key" "$SSH_DIR/ssh_host_ed25519_key"
        install -m 0644 -o root -g root "$DATA/ssh_host_ed25519_key.pub" "$SSH_DIR/ssh_host_ed25519_key.pub"
        restart_ssh=yes
        log "restored the node's SSH host key"
    fi
fi

# No interactive first-login questions on a headless node.
rm -f /root/.not_logged_in_yet

: >"$DATA/firstboot.done"
if [ -d /run/systemd/system ]; then
    systemctl disable pikube-firstboot.service >/dev/null 2>&1 || log "could not disable pikube-firstboot.service"
    if [ "$restart_ssh" = yes ]; then
        systemctl try-restart ssh.service >/dev/null 2>&1 || true
    fi
fi
log "done"
