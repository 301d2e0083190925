#!/usr/bin/env python3
"""The SBOM (CycloneDX 1.5 JSON) and the dependencies' licence list of one build.

Which crates: `cargo tree` for TARGET with FEATURES (the build's own: normal and
build dependencies, no dev-dependencies, features resolved as that build resolves
them). `cargo metadata` alone is not enough: its graph omits the optional crates of
features it was not given (the packages' PostgreSQL backend) and unifies features
with the dev-dependencies' (crates the binary does not contain). Their details:
`cargo metadata` and Cargo.lock (each crate's SHA-256), offline, with the standard
library only. Writes OUT.cdx.json and OUT-licenses.tsv (crate, version, licence
expression, source), the crates sorted by name.

    packaging/sbom.py TARGET OUT_PREFIX [FEATURES]
"""

import json
import subprocess
import sys
import tomllib
import uuid
from datetime import datetime, timezone


def features_args(features):
    return ["--features", features] if features else []


def metadata(target, features):
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", target]
        + features_args(features),
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def built(target, features):
    """(name, version) of every crate the build compiles, as `cargo tree` resolves it."""
    out = subprocess.run(
        ["cargo", "tree", "--locked", "-e", "normal,build", "--target", target,
         "--prefix", "none", "--format", "{p}"] + features_args(features),
        check=True, capture_output=True, text=True,
    ).stdout
    crates = set()
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 2 and words[1].startswith("v"):
            crates.add((words[0], words[1][1:]))
    return crates


def shipped(meta, crates):
    """Package ids reachable from the root through normal and build dependencies,
    kept to the crates the build compiles."""
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    pkgs = {p["id"]: p for p in meta["packages"]}
    root = meta["resolve"]["root"]
    seen, todo = {root}, [root]
    while todo:
        for dep in nodes[todo.pop()]["deps"]:
            kinds = {k["kind"] for k in dep["dep_kinds"]}
            p = pkgs[dep["pkg"]]
            if kinds - {"dev"} and dep["pkg"] not in seen and (p["name"], p["version"]) in crates:
                seen.add(dep["pkg"])
                todo.append(dep["pkg"])
    missing = crates - {(pkgs[i]["name"], pkgs[i]["version"]) for i in seen}
    if missing:
        sys.exit(f"sbom: cargo tree builds crates cargo metadata does not reach: {sorted(missing)}")
    return root, seen, nodes


def spdx(license):
    """SPDX expression: the old `MIT/Apache-2.0` form is `MIT OR Apache-2.0`."""
    return " OR ".join(part.strip() for part in license.split("/"))


def purl(p):
    return f"pkg:cargo/{p['name']}@{p['version']}"


def main():
    target, prefix = sys.argv[1], sys.argv[2]
    features = sys.argv[3] if len(sys.argv) > 3 else ""
    meta = metadata(target, features)
    root, ids, nodes = shipped(meta, built(target, features))
    with open("Cargo.lock", "rb") as f:
        lock = tomllib.load(f)
    checksums = {(p["name"], p["version"]): p.get("checksum") for p in lock["package"]}
    pkgs = {p["id"]: p for p in meta["packages"]}
    main_pkg = pkgs[root]

    def component(p):
        c = {
            "type": "application" if p["id"] == root else "library",
            "bom-ref": purl(p),
            "name": p["name"],
            "version": p["version"],
            "purl": purl(p),
        }
        if p.get("description"):
            c["description"] = " ".join(p["description"].split())
        if p.get("license"):
            c["licenses"] = [{"expression": spdx(p["license"])}]
        digest = checksums.get((p["name"], p["version"]))
        if digest:
            c["hashes"] = [{"alg": "SHA-256", "content": digest}]
        return c

    deps = sorted((pkgs[i] for i in ids if i != root), key=lambda p: (p["name"], p["version"]))
    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": [{"name": "packaging/sbom.py (fhir-bridge)"}],
            "component": component(main_pkg),
            "properties": [
                {"name": "cargo:target", "value": target},
                {"name": "cargo:features", "value": features},
            ],
        },
        "components": [component(p) for p in deps],
        "dependencies": [
            {
                "ref": purl(pkgs[i]),
                "dependsOn": sorted(
                    purl(pkgs[d["pkg"]]) for d in nodes[i]["deps"] if d["pkg"] in ids
                    and {k["kind"] for k in d["dep_kinds"]} - {"dev"}
                ),
            }
            for i in sorted(ids)
        ],
    }
    with open(f"{prefix}.cdx.json", "w") as f:
        json.dump(bom, f, indent=1)
        f.write("\n")
    with open(f"{prefix}-licenses.tsv", "w") as f:
        f.write("crate\tversion\tlicense\tsource\n")
        for p in deps:
            source = "crates.io" if (p.get("source") or "").startswith("registry+") else p.get("source") or "local"
            f.write(f"{p['name']}\t{p['version']}\t{spdx(p.get('license') or 'UNKNOWN')}\t{source}\n")
    print(f"SBOM: {len(deps)} crates for {target} -> {prefix}.cdx.json, {prefix}-licenses.tsv")


if __name__ == "__main__":
    main()
