#!/usr/bin/env python3
"""Every crate a user's build of the published crates resolves (normal and build dependencies, all
features, on Linux) must declare a `rust-version` at most ours: the toolchain of that version
cannot be installed here, so this is how CI keeps the stated MSRV honest.

Reads `cargo metadata` on stdin; prints the offenders and exits 1 if there is any."""
import json
import sys


def version(text):
    parts = [int(part) for part in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


metadata = json.load(sys.stdin)
packages = {p["id"]: p for p in metadata["packages"]}
nodes = {n["id"]: n for n in metadata["resolve"]["nodes"]}
ours = [p for p in metadata["packages"] if p["name"] in ("vsp-rpc", "vsp-rpc-macros")]
msrv = version(ours[0]["rust_version"])

seen, stack = set(), [p["id"] for p in ours]
while stack:
    node = nodes[stack.pop()]
    if node["id"] in seen:
        continue
    seen.add(node["id"])
    for dep in node["deps"]:
        if any(kind["kind"] in (None, "build") for kind in dep["dep_kinds"]):
            stack.append(dep["pkg"])

offenders = sorted(
    (version(p["rust_version"]), p["name"], p["version"])
    for p in (packages[i] for i in seen)
    if p.get("rust_version") and version(p["rust_version"]) > msrv
)
for needed, name, ver in offenders:
    print(f"{name} {ver} needs Rust {'.'.join(map(str, needed)).removesuffix('.0')}")
print(f"{len(seen)} crates resolved for vsp-rpc (all features); rust-version {'.'.join(map(str, msrv)).removesuffix('.0')}:"
      f" {len(offenders)} need a newer Rust")
sys.exit(1 if offenders else 0)
