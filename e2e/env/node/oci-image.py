#!/usr/bin/env python3
"""Write a one-layer OCI image layout as a tar, ready for `ctr -n k8s.io images import`.

    oci-image.py --name registry.k8s.io/pause:3.10.1 --out pause.tar \
        --file /path/to/pause:/pause:0755 --entrypoint /pause

Contents are given as
    --file SRC:DEST[:MODE]     a regular file from the host (MODE octal, default from SRC)
    --dir DEST[:MODE]          a directory (default 0755; parents are added automatically)
    --symlink LINK:TARGET      a symbolic link
Image config: --entrypoint/--cmd (repeatable, one argv word each), --env K=V (repeatable),
--workdir, --user. The result is deterministic (mtime 0, uid/gid 0, sorted entries): the same
inputs give the same digests. The index entry carries the annotation
`io.containerd.image.name` (the full name ctr tags it with) and `org.opencontainers.image.ref.name`.
Stdlib only.
"""
import argparse
import hashlib
import io
import json
import os
import stat
import sys
import tarfile

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def tarinfo(name, kind, mode, size=0, linkname=""):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.size = size
    ti.linkname = linkname
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    return ti


def build_layer(files, dirs, links):
    """Return the uncompressed layer tar bytes."""
    entries = {}  # path -> (kind, mode, src|target)

    def add_parents(path):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p and p not in entries:
                entries[p] = ("dir", 0o755, None)

    for d in dirs:
        dest, _, mode = d.partition(":")
        dest = dest.strip("/")
        add_parents(dest)
        entries[dest] = ("dir", int(mode, 8) if mode else 0o755, None)
    for f in files:
        parts = f.split(":")
        if len(parts) not in (2, 3):
            sys.exit(f"--file wants SRC:DEST[:MODE], got {f!r}")
        src, dest = parts[0], parts[1].strip("/")
        mode = int(parts[2], 8) if len(parts) == 3 else stat.S_IMODE(os.stat(src).st_mode)
        add_parents(dest)
        entries[dest] = ("file", mode, src)
    for link in links:
        name, _, target = link.partition(":")
        name = name.strip("/")
        add_parents(name)
        entries[name] = ("link", 0o777, target)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(entries):
            kind, mode, arg = entries[path]
            if kind == "dir":
                tar.addfile(tarinfo(path + "/", tarfile.DIRTYPE, mode))
            elif kind == "link":
                tar.addfile(tarinfo(path, tarfile.SYMTYPE, mode, linkname=arg))
            else:
                with open(arg, "rb") as fh:
                    data = fh.read()
                tar.addfile(tarinfo(path, tarfile.REGTYPE, mode, size=len(data)), io.BytesIO(data))
    return buf.getvalue()


def blob(blobs, data, media_type):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help="full image name, e.g. tern.local/busybox:1.35.0")
    ap.add_argument("--out", required=True)
    ap.add_argument("--file", action="append", default=[])
    ap.add_argument("--dir", action="append", default=[])
    ap.add_argument("--symlink", action="append", default=[])
    ap.add_argument("--entrypoint", action="append", default=None)
    ap.add_argument("--cmd", action="append", default=None)
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--workdir", default="/")
    ap.add_argument("--user", default="")
    a = ap.parse_args()

    layer = build_layer(a.file, a.dir, a.symlink)
    blobs = {}
    layer_desc = blob(blobs, layer, "application/vnd.oci.image.layer.v1.tar")
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] + a.env
    cfg = {"Env": env, "WorkingDir": a.workdir}
    if a.entrypoint:
        cfg["Entrypoint"] = a.entrypoint
    if a.cmd:
        cfg["Cmd"] = a.cmd
    if a.user:
        cfg["User"] = a.user
    config = {
        "created": "1970-01-01T00:00:00Z",
        "architecture": ARCH,
        "os": "linux",
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "e2e/env/node/oci-image.py"}],
    }
    config_desc = blob(blobs, json.dumps(config, sort_keys=True, separators=(",", ":")).encode(),
                       "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer_desc]}
    manifest_desc = blob(blobs, json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode(),
                         "application/vnd.oci.image.manifest.v1+json")
    tag = a.name.rsplit(":", 1)[1] if ":" in a.name.rsplit("/", 1)[-1] else "latest"
    manifest_desc["platform"] = {"architecture": ARCH, "os": "linux"}
    manifest_desc["annotations"] = {"io.containerd.image.name": a.name,
                                    "org.opencontainers.image.ref.name": tag}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [manifest_desc]}

    tmp = a.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as out:
        def put(name, data):
            out.addfile(tarinfo(name, tarfile.REGTYPE, 0o644, size=len(data)), io.BytesIO(data))
        out.addfile(tarinfo("blobs/", tarfile.DIRTYPE, 0o755))
        out.addfile(tarinfo("blobs/sha256/", tarfile.DIRTYPE, 0o755))
        for digest in sorted(blobs):
            put("blobs/sha256/" + digest.split(":", 1)[1], blobs[digest])
        put("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        put("index.json", json.dumps(index, sort_keys=True, separators=(",", ":")).encode())
    os.replace(tmp, a.out)
    print(f"{a.name} {manifest_desc['digest']} layer {len(layer)} bytes -> {a.out}")


if __name__ == "__main__":
    main()
