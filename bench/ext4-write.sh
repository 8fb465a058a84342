#!/usr/bin/env bash
# Throughput of the offline ext4 writer compared with `cp -r` onto a local
# filesystem and with `debugfs -w` `write` commands, all writing the same
# 500 MiB payload (one 400 MiB file + 2,000 small files) into the same
# fixture (Ubuntu 24.04 feature set, 4 KiB blocks, at an 8 MiB offset).
#
# Usage: bench/ext4-write.sh   (needs mkfs.ext4, debugfs, e2fsck)
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=$(mktemp -d /var/tmp/pikube-ext4-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
OFFSET=$((8 * 1024 * 1024))
FS_MIB=1536
LEN=$((FS_MIB * 1024 * 1024))

cargo build --release -q -j 2 -p pikube-ext4 --example write_tree
BIN=target/release/examples/write_tree

echo "== payload"
mkdir -p "$WORK/payload/small"
head -c $((400 * 1024 * 1024)) /dev/urandom > "$WORK/payload/big.bin"
python3 - "$WORK/payload/small" <<'PY'
import os, random, sys
random.seed(1)
d = sys.argv[1]
total = 0
for i in range(2000):
    sub = os.path.join(d, "d%02d" % (i % 40))
    os.makedirs(sub, exist_ok=True)
    n = random.randint(1, 100 * 1024)
    total += n
    with open(os.path.join(sub, "f%04d.dat" % i), "wb") as f:
        f.write(os.urandom(n))
print("small files: 2000, %.1f MiB" % (total / 1048576))
PY
PAYLOAD_BYTES=$(du -sb "$WORK/payload" | cut -f1)
echo "payload: $((PAYLOAD_BYTES / 1048576)) MiB"

echo "== fixture"
truncate -s $((OFFSET + LEN + 1024 * 1024)) "$WORK/fixture.img"
mkfs.ext4 -q -F -E root_owner=0:0,offset=$OFFSET -b 4096 -I 256 \
  -O has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize,^orphan_file \
  "$WORK/fixture.img" ${FS_MIB}M
sync

mibs() { python3 -c "import sys; print('%.1f' % ($PAYLOAD_BYTES / 1048576 / float(sys.argv[1])))" "$1"; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print('%.2f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$2"; }

echo "== pikube-ext4 (write_tree, fsync at close)"
cp --sparse=always "$WORK/fixture.img" "$WORK/ours.img"; sync
t0=$(now)
"$BIN" "$WORK/ours.img" $OFFSET $LEN "$WORK/payload" /bench
t1=$(now)
T_OURS=$(elapsed "$t0" "$t1")
e2fsck -fn "$WORK/ours.img?offset=$OFFSET" >/dev/null 2>&1 && echo "e2fsck -fn: clean" || { echo "e2fsck -fn: NOT CLEAN"; exit 1; }

echo "== cp -r + sync"
mkdir -p "$WORK/cpdst"; sync
t0=$(now)
cp -r "$WORK/payload" "$WORK/cpdst/bench"
sync
t1=$(now)
T_CP=$(elapsed "$t0" "$t1")

echo "== debugfs -w (write commands) + sync"
cp --sparse=always "$WORK/fixture.img" "$WORK/debugfs.img"; sync
{
  echo "mkdir /bench"
  (cd "$WORK/payload" && find . -mindepth 1 -type d | sed 's|^\./||' | sort) | while read -r d; do echo "mkdir /bench/$d"; done
  (cd "$WORK/payload" && find . -type f | sed 's|^\./||' | sort) | while read -r f; do echo "write $WORK/payload/$f /bench/$f"; done
} > "$WORK/debugfs.cmds"
t0=$(now)
debugfs -w -f "$WORK/debugfs.cmds" "$WORK/debugfs.img?offset=$OFFSET" >/dev/null 2>&1
sync
t1=$(now)
T_DBG=$(elapsed "$t0" "$t1")
e2fsck -fn "$WORK/debugfs.img?offset=$OFFSET" >/dev/null 2>&1 && echo "debugfs result: e2fsck clean" || echo "debugfs result: e2fsck NOT clean"

echo
echo "== results ($((PAYLOAD_BYTES / 1048576)) MiB payload)"
printf "%-22s %8s s %8s MiB/s\n" "pikube-ext4" "$T_OURS" "$(mibs "$T_OURS")"
printf "%-22s %8s s %8s MiB/s\n" "cp -r + sync" "$T_CP" "$(mibs "$T_CP")"
printf "%-22s %8s s %8s MiB/s\n" "debugfs -w" "$T_DBG" "$(mibs "$T_DBG")"
python3 -c "import sys; o,c,d=map(float,sys.argv[1:]); print('ours/cp = %.2fx   ours vs debugfs = %.1fx faster' % (c/o, d/o))" "$T_OURS" "$T_CP" "$T_DBG"
