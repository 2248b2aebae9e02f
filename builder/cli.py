"""``python -m builder``: the host CLI behind the invoke tasks.

Every user error ends here as ``file:line: path: message`` + ``hint:`` and
exit status 2 (1 for a failed boot check); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.errors import BasaltError
from builder.stages import ORDER
from builder.vm.qemu import ACCELS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="basalt-build", description="Build and boot Basalt images")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="print the resolved stage plan without building")
    p.add_argument("--image", default="x86_64-iso")
    p.add_argument("--config", help="site config.yaml to bake in")
    p.add_argument("--json", action="store_true")
    b = sub.add_parser("build", help="build an image into out/<image>/")
    b.add_argument("--image", default="x86_64-iso")
    b.add_argument("--config", help="site config.yaml to bake in")
    for cmd in (p, b):
        cmd.add_argument("--k3s-binary", metavar="PATH",
                         help="air-gapped: the k3s release binary to use (checked against the pinned checksum)")
        cmd.add_argument("--k3s-artifacts", metavar="DIR",
                         help="air-gapped: a directory with the k3s release files (k3s, sha256sum-amd64.txt, ...)")
    b.add_argument("--until", metavar="STAGE",
                   help=f"build only this stage and what it reads, publish nothing ({', '.join(ORDER)}; an output "
                        "stage by its name in 'plan', e.g. iso); rootfs leaves the tree to inspect")
    v = sub.add_parser("validate", help="validate a site config.yaml or an image definition")
    v.add_argument("file")
    q = sub.add_parser("boot", help="boot a built image in QEMU")
    q.add_argument("--image", default="x86_64-iso")
    q.add_argument("--firmware", choices=["bios", "uefi", "direct"],
                   help="default: the image's first (bios on x86_64 images with both, uefi on arm64); direct: "
                        "QEMU loads the medium's own kernel and initramfs with its GRUB command line")
    q.add_argument("--accel", choices=list(ACCELS), default="tcg",
                   help="tcg: single-threaded TCG (default, reliable); mttcg: one host thread per vCPU; kvm")
    q.add_argument("--cpus", type=int, help="vCPUs (default: the image definition's qemu.cpus)")
    q.add_argument("--check", action="store_true", help="wait for the ready line, report, power off")
    q.add_argument("--timeout", type=float, default=180.0)
    q.add_argument("--ssh-port", type=int, default=0, help="host port forwarded to the guest's SSH (0: pick)")
    q.add_argument("--iso", help="boot this ISO (or disk image, .img) instead of out/<image>/'s")
    q.add_argument("--disk-size", type=int, default=4096, metavar="MIB",
                   help="a disk image boots as a virtual disk of this size (an overlay: the image is never written)")
    q.add_argument("--seed", help="attach this NoCloud seed ISO as a second CD (see 'seed')")
    q.add_argument("--state", help="attach this state disk (created, 512 MiB ext4, if it does not exist)")
    f = sub.add_parser("flash", help="write a disk image to a card or disk by its block map, then verify it")
    f.add_argument("--image", default="x86_64-raw", help="the image definition whose disk artifact to write")
    f.add_argument("--artifact", help="this .img (or one with .img.xz and .img.bmap beside it) instead")
    f.add_argument("--device", required=True, help="the card or disk, e.g. /dev/sdb (a regular file stands in)")
    f.add_argument("--force", action="store_true", help="write to a disk that is not removable too")
    s = sub.add_parser("seed", help="make a NoCloud seed ISO (label cidata) from user-data")
    s.add_argument("user_data", help="a config.yaml (validated) or a #! script")
    s.add_argument("--meta-data", help="a meta-data file (default: an instance-id only)")
    s.add_argument("-o", "--output", default="out/seed.iso")
    k = sub.add_parser("keygen", help="make a minisign key pair for signing upgrade bundles")
    k.add_argument("-o", "--out", required=True, help="the secret key's path, NAME.key (NAME.pub is written beside it)")
    k.add_argument("--comment", default="basalt upgrade signing key", help="a note kept with the key")
    c = sub.add_parser("configure", help="stamp a site config onto a built ISO, raw disk or SD-card image")
    c.add_argument("--image", required=True, metavar="ARTIFACT",
                   help="the built artifact (.iso or .img), or an image definition name (its out/<image>/ artifact)")
    c.add_argument("--config", required=True, help="the site config.yaml (validated first)")
    c.add_argument("-o", "--out", help="the output directory (default out/sites/<config name>/)")
    c.add_argument("--name", help="the site's name (default: the config file's name)")
    fl = sub.add_parser("fleet", help="an inventory of sites: render, build, diff (docs/fleet.md)")
    fsub = fl.add_subparsers(dest="fleet_command", required=True)
    fr = fsub.add_parser("render", help="render and validate every site; -o writes them (secrets redacted)")
    fr.add_argument("inventory")
    fr.add_argument("-o", "--out", help="a directory for each site's rendered config, NAME.yaml")
    fb = fsub.add_parser("build", help="stamp one artifact per site (in parallel), or one for all (--one-image)")
    fb.add_argument("inventory")
    fb.add_argument("--image", required=True, metavar="ARTIFACT", help="the built artifact (.iso or .img)")
    fb.add_argument("-o", "--out", default="out/fleet", help="output directory (one per site inside)")
    fb.add_argument("--one-image", action="store_true", help="one artifact; each device's config chosen at boot")
    fb.add_argument("--jobs", type=int, default=0, help="parallel stamps (default: every core)")
    fd = fsub.add_parser("diff", help="which sites' rendered configs changed, as unified diffs (secrets redacted)")
    fd.add_argument("old", help="an inventory, or a directory 'fleet render -o' wrote")
    fd.add_argument("new")
    ca = sub.add_parser("cache", help="the stage cache: its size, and pruning it (least recently used first)")
    ca.add_argument("--prune", action="store_true", help="remove least recently used outputs down to --max")
    ca.add_argument("--max", metavar="SIZE", help="the cache's largest size, e.g. 20G (default BASALT_CACHE_MAX, 40G)")
    ca.add_argument("--need", metavar="SIZE",
                    help="then fail unless the disks of the cache and of temporary files have SIZE free")
    ab = sub.add_parser("app-build", help="build an app's image from git with buildah, deliver it, stage it "
                                          "(./inv app -- build; docs/apps.md)")
    ab.add_argument("source", help="a git URL or a local git checkout")
    ab.add_argument("--name", required=True, help="the app (it must exist: basalt app run first)")
    ab.add_argument("--ref", default="HEAD", help="a branch, tag or commit (default HEAD)")
    ab.add_argument("-n", "--namespace", default="default")
    ab.add_argument("--kubeconfig", help="the cluster to stage into (default $KUBECONFIG, ~/.kube/config)")
    ab.add_argument("-o", "--out", default="out/apps", help="where the image archive and its manifest go")
    ab.add_argument("--store", help="buildah's storage (default: the cache's buildah/)")
    ab.add_argument("--deliver", metavar="ssh://[USER@]HOST[:PORT]|DIR",
                    help="put the image on a node: over SSH into its containerd and air-gap images, "
                         "or into a directory")
    ab.add_argument("--identity", help="the SSH key for --deliver ssh://")
    ab.add_argument("--known-hosts", help="the known_hosts file for --deliver ssh:// (new hosts are added)")
    ab.add_argument("--registry", metavar="HOST[:PORT][/PATH]", help="push to a registry the site runs, and stage that")
    ab.add_argument("--insecure-registry", action="store_true", help="the registry speaks plain HTTP")
    ab.add_argument("--no-stage", action="store_true", help="build and deliver only")
    ab.add_argument("--watch", action="store_true", help="poll the ref; build, deliver and stage each new commit")
    ab.add_argument("--interval", default="30s", help="how often --watch asks (default 30s)")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except BasaltError as exc:
        if args.debug:
            raise
        print(f"error: {exc.render()}" if len(exc.problems) == 1 else
              f"error: {len(exc.problems)} problems:\n{exc.render()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    from builder import imagedef, pipeline, plan
    if args.command == "validate":
        if looks_like_image_definition(args.file):
            img = imagedef.load_image(args.file)
            print(f"{img.source}: ok (image definition {img.name}, {img.arch})")
        else:
            plan.load_site_config(args.file)
            print(f"{args.file}: ok (site config)")  # warnings, if any, are on stderr above
        return 0
    if args.command == "plan":
        compiled = plan.plan(args.image, args.config, k3s_binary=args.k3s_binary, k3s_artifacts=args.k3s_artifacts)
        print(json.dumps(compiled.to_json(), indent=2) if args.json else compiled.describe())
        return 0
    if args.command == "build":
        compiled = plan.plan(args.image, args.config, k3s_binary=args.k3s_binary, k3s_artifacts=args.k3s_artifacts)
        out = pipeline.build(compiled, until=args.until)
        print(out)
        return 0
    if args.command == "boot":
        from builder.vm import qemu
        img = imagedef.load_image(args.image)
        iso = Path(args.iso) if args.iso else img.medium()[1]
        state = Path(args.state) if args.state else None
        if state and not state.exists():
            from builder.vm import seed
            seed.make_state_disk(state)
        firmware = args.firmware or img.outputs[0].firmware[0]
        return qemu.boot_command(img, iso, firmware, args.accel, args.check, args.timeout, args.ssh_port,
                                 Path(args.seed) if args.seed else None, state, args.cpus, args.disk_size)
    if args.command == "flash":
        from builder.fleet import flash
        img = imagedef.load_image(args.image)
        artifact = Path(args.artifact) if args.artifact else img.artifact("img")
        done = flash.flash(artifact, args.device, args.force)
        print(f"{args.device}: {done['written'] >> 20} MiB of {done['image_size'] >> 20} MiB written and verified")
        return 0
    if args.command == "configure":
        from builder.fleet import stamp
        artifact = Path(args.image)
        if not artifact.is_file() and "/" not in args.image:
            artifact = imagedef.load_image(args.image).medium()[1]
        site = args.name or Path(args.config).stem
        out = Path(args.out) if args.out else imagedef.OUT / "sites" / site
        print(stamp.configure(artifact, Path(args.config), out, site))
        return 0
    if args.command == "fleet":
        from builder.fleet import render
        if args.fleet_command == "render":
            rendered = render.render_all(Path(args.inventory), Path(args.out) if args.out else None)
            print(f"{args.inventory}: {len(rendered)} site(s) rendered and valid"
                  + (f", written to {args.out}" if args.out else ""))
        elif args.fleet_command == "build":
            for path in render.build(Path(args.inventory), Path(args.image), Path(args.out), args.one_image,
                                    args.jobs):
                print(path)
        else:
            changes = render.diff(Path(args.old), Path(args.new))
            print(changes or "no site changed", end="" if changes else "\n")
        return 0
    if args.command == "keygen":
        from builder import signing
        secret = Path(args.out)
        if secret.suffix != ".key":
            raise BasaltError.simple(f"{secret}: a secret key's name ends in .key",
                                     hint="e.g. ./inv keygen --out keys/site.key")
        key = signing.generate(secret, args.comment)
        print(f"{key.secret} (secret, mode 0600: keep it off the nodes and out of version control)")
        print(f"{key.public} (public; key id {key.key_id()})")
        print(f"name it in the image definition:\n  upgrade:\n    signing_key: {key.secret}")
        return 0
    if args.command == "seed":
        from builder.vm import seed
        out = seed.make_seed(Path(args.output), Path(args.user_data),
                             Path(args.meta_data) if args.meta_data else None)
        print(out)
        return 0
    if args.command == "app-build":
        from builder import appbuild
        return appbuild.main(args)
    if args.command == "cache":
        return cache_command(args)
    raise AssertionError(args.command)


def cache_command(args: argparse.Namespace) -> int:
    import tempfile

    from builder import cache
    from builder.download import cache_root
    root = cache_root()
    if args.prune:
        pruned = cache.prune(root, cache.parse_size(args.max, "--max") if args.max else None)
        print(f"{root}: {pruned.removed} stage output(s) removed, {pruned.freed / cache.GIB:.1f} GiB freed"
              + (f"; {pruned.kept} kept" if pruned.kept else ""))
    print(cache.describe(root))
    if args.need:
        need = cache.parse_size(args.need, "--need")
        for where in {root, Path(tempfile.gettempdir())}:
            free = cache.free_bytes(where)
            if free < need:
                raise BasaltError.simple(
                    f"{where}: {free / cache.GIB:.1f} GiB free, {need / cache.GIB:.1f} GiB needed",
                    hint="free space on that disk, or point BASALT_CACHE (the cache) or TMPDIR (the test run's "
                         "files) at a larger one; './inv cache --prune --max 10G' shrinks the cache")
    return 0


def looks_like_image_definition(name: str) -> bool:
    from agent.config.yamlsource import load
    from builder import imagedef
    path = imagedef.find(name)
    value = load(path, strict=False).value
    return isinstance(value, dict) and ("outputs" in value or "arch" in value or "extends" in value)


if __name__ == "__main__":
    sys.exit(main())
