#!/usr/bin/env python3
"""Read-only overlay benchmarks: stratafs against kernel overlayfs and fuse-overlayfs on the
same layers in the same run. Figures, not pass/fail. Run as root through benches/run.sh."""
import os, statistics, subprocess, sys, tempfile, time

BIN = os.path.abspath(sys.argv[1])
B = sys.argv[2]
RUNS = int(os.environ.get("RUNS", "5"))
STACKS = {
    "small": [f"{B}/small/top", f"{B}/small/bottom"],
    "large": [f"{B}/large/top", f"{B}/large/bottom"],
    "wide": [f"{B}/wide/top", f"{B}/wide/bottom"],
    "py": [f"{B}/py/scipy", f"{B}/py/numpy", f"{B}/py/base"],
}
# Peers beside the kernel, as "label=command;label=command" (each takes fuse-overlayfs's
# `-o lowerdir=` command line); stratafs (argv[1]) is always last.
PEERS = dict(p.split("=", 1) for p in
             os.environ.get("PEERS", "fuse-overlayfs=fuse-overlayfs").split(";") if p)
FS = ["kernel", *PEERS, "stratafs"]


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, **kw)


def mount(fs, stack, mnt):
    low = ":".join(stack)
    if fs == "kernel":
        sh(f"mount -t overlay overlay -o lowerdir={low} {mnt}")
    else:
        sh(f"{PEERS.get(fs, BIN)} -o lowerdir={low} {mnt}")


def umount(fs, mnt):
    sh(f"umount {mnt}" if fs == "kernel" else f"fusermount3 -u {mnt}")
    time.sleep(0.05)


def drop_caches():
    sh("sync; echo 3 > /proc/sys/vm/drop_caches")


def timed(cmd):
    t = time.perf_counter()
    sh(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def mount_time(fs, stack, mnt):
    ts = []
    for _ in range(RUNS):
        t = time.perf_counter()
        mount(fs, stack, mnt)
        ts.append(time.perf_counter() - t)
        umount(fs, mnt)
    return statistics.median(ts)


def cold(fs, stack, mnt, cmd):
    ts = []
    for _ in range(RUNS):
        drop_caches()
        mount(fs, stack, mnt)
        ts.append(timed(cmd.format(m=mnt)))
        umount(fs, mnt)
    return statistics.median(ts)


def warm(fs, stack, mnt, cmd):
    mount(fs, stack, mnt)
    timed(cmd.format(m=mnt))
    ts = [timed(cmd.format(m=mnt)) for _ in range(RUNS)]
    umount(fs, mnt)
    return statistics.median(ts)


def daemon_pid(mnt):
    """The process serving `mnt`: with a keeper (stratafs's failover), the server is its
    child with the same command line, and the keeper holds no caches."""
    found = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                args = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if mnt.encode() in args:
                found.append(p)
    for p in found:
        if rss_kb(p, "PPid") in [int(q) for q in found]:
            return p
    return found[0] if found else None


def rss_kb(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field):
            return int(line.split()[1])


def memory(fs, stack, mnt):
    mount(fs, stack, mnt)
    pid = daemon_pid(mnt)
    timed(f"find {mnt} -printf '%s\\n'")
    walked = rss_kb(pid, "VmRSS")
    drop_caches()
    time.sleep(1)
    after = rss_kb(pid, "VmRSS")
    peak = rss_kb(pid, "VmHWM")
    umount(fs, mnt)
    return peak / 1024, walked / 1024, after / 1024


WORKLOADS = [
    ("mount, 10-file image", "small", "mount", None),
    ("mount, 100,000-file image", "large", "mount", None),
    ("`find` 100,000 files, cold", "large", "cold", "find {m}"),
    ("`find` 100,000 files, warm", "large", "warm", "find {m}"),
    ("`find` python image, cold", "py", "cold", "find {m}"),
    ("`find` python image, warm", "py", "warm", "find {m}"),
    ("`tar c usr/lib` python image, cold", "py", "cold", "tar cf - -C {m} usr/lib | cat >/dev/null"),
    ("`tar c usr/lib` python image, warm", "py", "warm", "tar cf - -C {m} usr/lib | cat >/dev/null"),
    ("read 100,000 small files, cold", "large", "cold", "tar cf - -C {m} . | cat >/dev/null"),
    ("read 100,000 small files, warm", "large", "warm", "tar cf - -C {m} . | cat >/dev/null"),
    ("python import numpy, scipy.linalg, cold", "py", "cold",
     "chroot {m} python3 -c 'import numpy, scipy.linalg'"),
    ("python import numpy, scipy.linalg, warm", "py", "warm",
     "chroot {m} python3 -c 'import numpy, scipy.linalg'"),
]


def main():
    mnt = tempfile.mkdtemp(prefix="stratafs-bench-")
    only = os.environ.get("ONLY")
    print("| workload | kernel overlayfs (s) | " + " | ".join(f"{fs} (s)" for fs in FS[1:])
          + " | " + " | ".join(f"{fs} / kernel" for fs in FS[1:]) + " |")
    print("|---" * (2 * len(FS)) + "|")
    for name, stack, kind, cmd in WORKLOADS:
        if only and only not in name:
            continue
        secs = {}
        for fs in FS:
            if kind == "mount":
                secs[fs] = mount_time(fs, STACKS[stack], mnt)
            elif kind == "cold":
                secs[fs] = cold(fs, STACKS[stack], mnt, cmd)
            else:
                secs[fs] = warm(fs, STACKS[stack], mnt, cmd)
        k = secs["kernel"]
        print(f"| {name} | " + " | ".join(f"{secs[fs]:.4f}" for fs in FS) + " | "
              + " | ".join(f"{secs[fs] / k:.2f}" for fs in FS[1:]) + " |", flush=True)
    if os.environ.get("MEMORY", "1") == "0":
        os.rmdir(mnt)
        return
    mem = {fs: memory(fs, STACKS["wide"], mnt) for fs in FS[1:]}
    for fs, (peak, walked, after) in mem.items():
        print(f"| {fs} RSS, 200,000 entries | peak {peak:.1f} MB | after walk {walked:.1f} MB "
              f"| after drop_caches {after:.1f} MB |", flush=True)
    os.rmdir(mnt)


if __name__ == "__main__":
    main()
