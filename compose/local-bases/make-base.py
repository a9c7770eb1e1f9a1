#!/usr/bin/env python3
"""Writes the root filesystem of a base image, as a tar for `docker import`, from files
already on this Debian/Ubuntu host. No registry, no network.

    make-base.py builder OUT.tar   Rust toolchain (the host's) + gcc + libc6-dev + busybox-static
                                   (local-bases.sh adds the host's cargo registry cache on top)
    make-base.py runtime OUT.tar   glibc and libgcc only: enough for the dynamically linked
                                   `airlock` binary (like debian:bookworm-slim, minus the rest)
    make-base.py redis OUT.tar     redis-server, redis-cli, setpriv and their shared libraries,
                                   a static busybox as /bin/sh (like redis:7, minus the rest)
    make-base.py haproxy OUT.tar   haproxy and its shared libraries (for the Docker socket proxy
                                   of docker-compose.socket-proxy.yml; like haproxy:2.6)

Files are taken from installed Debian packages (with their dependencies) or found with ldd, and
written with canonical paths (this host is /usr-merged: /bin, /lib, /lib64 and /sbin are
symlinks into /usr, and so they are in the image).
"""

import os
import re
import stat
import subprocess
import sys
import tarfile
import io

SKIP_PREFIXES = (
    "/usr/share/doc/",
    "/usr/share/man/",
    "/usr/share/info/",
    "/usr/share/locale/",
    "/usr/share/lintian/",
    "/usr/share/bug/",
)
MERGED = {"bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64", "sbin": "usr/sbin"}


def canonical(path):
    """The path with its parent directories resolved (the last component kept as is)."""
    parent, base = os.path.split(path.rstrip("/") or "/")
    if not base:
        return "/"
    return os.path.join(os.path.realpath(parent), base)


def installed_packages():
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package}\t${Status}\t${Provides}\t${Pre-Depends}\t${Depends}\n"],
        check=True, capture_output=True, text=True,
    ).stdout
    pkgs, provides = {}, {}
    for line in out.splitlines():
        name, status, prov, pre, dep = (line.split("\t") + [""] * 5)[:5]
        if not status.endswith(" installed"):
            continue
        pkgs[name] = ", ".join(x for x in (pre, dep) if x)
        for p in prov.split(","):
            p = p.strip().split(" ")[0]
            if p:
                provides.setdefault(p, name)
    return pkgs, provides


def closure(roots):
    pkgs, provides = installed_packages()
    want, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        name = name.split(":")[0]
        if name not in pkgs:
            name = provides.get(name, name)
        if name in want or name not in pkgs:
            continue
        want.add(name)
        for clause in filter(None, (c.strip() for c in pkgs[name].split(","))):
            for alt in clause.split("|"):
                alt = re.sub(r"\(.*?\)|\[.*?\]", "", alt).strip().split(":")[0]
                if alt in pkgs or alt in provides:
                    todo.append(alt)
                    break
    missing = [r for r in roots if r not in want and provides.get(r) not in want]
    if missing:
        sys.exit(f"not installed on this host: {' '.join(missing)} (apt-get install them)")
    return sorted(want)


def package_files(names):
    files = []
    for n in names:
        out = subprocess.run(["dpkg", "-L", n], check=True, capture_output=True, text=True).stdout
        files += [l for l in out.splitlines() if l.startswith("/") and l != "/."]
    return files


def ldd_files(binaries):
    files = []
    for b in binaries:
        files.append(b)
        out = subprocess.run(["ldd", b], capture_output=True, text=True).stdout
        for m in re.finditer(r"(/\S+)\s+\(0x", out):
            files.append(m.group(1))
    return files


class Rootfs:
    def __init__(self, out):
        self.tar = tarfile.open(out, "w", format=tarfile.GNU_FORMAT)
        self.seen = set()
        for link, target in MERGED.items():
            self.symlink("/" + link, target)
        self.mkdir("/tmp", 0o1777)

    def _info(self, arc, kind, mode):
        ti = tarfile.TarInfo(arc.lstrip("/"))
        ti.type, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname, ti.mtime = kind, mode, 0, 0, "root", "root", 0
        return ti

    def _parents(self, arc):
        parent = os.path.dirname(arc.rstrip("/"))
        if parent not in ("", "/") and parent not in self.seen:
            self.mkdir(parent, 0o755)

    def mkdir(self, arc, mode=0o755):
        if arc in self.seen:
            return
        self._parents(arc)
        self.seen.add(arc)
        self.tar.addfile(self._info(arc, tarfile.DIRTYPE, mode))

    def symlink(self, arc, target):
        if arc in self.seen:
            return
        self._parents(arc)
        self.seen.add(arc)
        ti = self._info(arc, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.tar.addfile(ti)

    def write(self, arc, data, mode=0o644):
        if arc in self.seen:
            return
        self._parents(arc)
        self.seen.add(arc)
        data = data.encode() if isinstance(data, str) else data
        ti = self._info(arc, tarfile.REGTYPE, mode)
        ti.size = len(data)
        self.tar.addfile(ti, io.BytesIO(data))

    def host(self, path, arc=None):
        """Adds a host file, symlink or directory (not its contents) at its canonical path."""
        if path.startswith(SKIP_PREFIXES):
            return
        src = canonical(path)
        arc = arc or src
        if arc in self.seen or arc.lstrip("/") in MERGED:
            return
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            self.symlink(arc, os.readlink(src))
            if arc == src:
                target = os.path.realpath(src)
                if os.path.exists(target):
                    self.host(target)
        elif stat.S_ISDIR(st.st_mode):
            self.mkdir(arc, stat.S_IMODE(st.st_mode))
        elif stat.S_ISREG(st.st_mode):
            self._parents(arc)
            self.seen.add(arc)
            ti = self._info(arc, tarfile.REGTYPE, stat.S_IMODE(st.st_mode))
            ti.size = st.st_size
            with open(src, "rb") as f:
                self.tar.addfile(ti, f)

    def tree(self, src, arc, skip=()):
        """Adds a host directory tree under another name."""
        for dirpath, dirnames, filenames in os.walk(src):
            rel = os.path.relpath(dirpath, src)
            dirnames[:] = [d for d in dirnames if os.path.normpath(os.path.join(rel, d)) not in skip]
            target = os.path.normpath(os.path.join(arc, rel))
            self.host(dirpath, target)
            for f in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                self.host(os.path.join(dirpath, f), os.path.join(target, f))

    def etc(self, users=""):
        self.write("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n" + users)
        self.write("/etc/group", "root:x:0:\n")
        self.write("/etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n")
        self.mkdir("/root", 0o700)

    def close(self):
        self.tar.close()


def busybox_applets(fs, into="/usr/bin"):
    bb = "/usr/bin/busybox" if os.path.exists("/usr/bin/busybox") else "/bin/busybox"
    fs.host(bb, into + "/busybox")
    names = subprocess.run([bb, "--list"], check=True, capture_output=True, text=True).stdout.split()
    for a in names:
        if re.fullmatch(r"[A-Za-z0-9_.\[-]+", a) and a not in ("busybox", ".", ".."):
            fs.symlink(f"{into}/{a}", "busybox")


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("builder", "runtime", "redis", "haproxy"):
        sys.exit(__doc__)
    kind, out = sys.argv[1], sys.argv[2]
    fs = Rootfs(out)
    if kind == "runtime":
        for f in package_files(closure(["libc6", "libgcc-s1"])):
            fs.host(f)
        fs.etc()
    elif kind == "haproxy":
        for f in ldd_files(["/usr/sbin/haproxy"]):
            fs.host(f)
        fs.etc("haproxy:x:99:99:haproxy:/var/lib/haproxy:/usr/sbin/nologin\n")
    elif kind == "redis":
        # setpriv (util-linux, as in the official image) drops root after reading the secret.
        for f in ldd_files(["/usr/bin/redis-server", "/usr/bin/redis-cli", "/usr/bin/setpriv"]):
            fs.host(f)
        fs.symlink("/usr/bin/redis-server", "redis-check-rdb")
        fs.host("/usr/bin/redis-check-rdb")
        busybox_applets(fs)
        fs.etc("redis:x:999:999:redis:/data:/bin/sh\n")
        fs.mkdir("/data", 0o755)
    else:
        roots = ["dash", "bash", "coreutils", "grep", "sed", "findutils", "gcc", "libc6-dev",
                 "binutils", "busybox-static"]
        for f in package_files(closure(roots)):
            fs.host(f)
        fs.symlink("/usr/bin/sh", "dash")
        # Managed by update-alternatives on the host, so in no package's file list.
        fs.symlink("/usr/bin/cc", "gcc")
        sysroot = subprocess.run(["rustc", "--print", "sysroot"], check=True,
                                 capture_output=True, text=True).stdout.strip()
        fs.tree(sysroot, "/usr/local/rust", skip={"share"})
        fs.mkdir("/usr/local/cargo/registry", 0o755)
        fs.etc()
    fs.close()


if __name__ == "__main__":
    main()
