"""Builds from git, on the build host (Rio's git-triggered builds, without a build farm on the edge):
``./inv app -- build SOURCE --name N [--ref BRANCH]``.

SOURCE is a git URL or a local directory (a git checkout). The commit REF names is checked out
shallowly into a temporary directory; its ``Dockerfile`` (or ``Containerfile``) is built by
Debian's ``buildah`` with no daemon (``--isolation chroot``: RUN steps in a chroot, no container
runtime; storage of its own under the cache, never the host's), into ``basalt.local/N:COMMIT``
(the commit's first 12 hex digits). The image is written as an archive (docker-archive, what k3s's
air-gap import and ``ctr images import`` read), with a manifest of its size and hash, under
``out/apps/``. Then it is delivered, with no registry, and staged:

- ``--deliver ssh://[USER@]HOST[:PORT]``: copied to the node's air-gap images directory
  (``/var/lib/rancher/k3s/agent/images``) and imported into containerd now
  (``ctr -n k8s.io images import``); ``--deliver DIR``: copied into a directory (a node's disk, a
  card); ``--registry HOST[:PORT]/PATH``: pushed to a registry the site runs;
- staged: ``basalt app stage N basalt.local/N:COMMIT`` against the cluster (``--kubeconfig``),
  a new revision at 0% at its preview host. The app must exist (``basalt app run`` first); that is
  checked before anything is built.

``--watch`` asks SOURCE for REF's commit every ``--interval`` (``git ls-remote``, bounded) and
builds, delivers and stages each new one. A bad input — a source that is not a repository, a ref
that is not there, no Dockerfile, a build that fails — is a clear error with a hint, and leaves the
app's objects as they were.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import files
from agent.apps import spec
from agent.errors import BasaltError, Problem
from builder import host, progress
from builder.download import cache_root, sha256_file

REGISTRY = "basalt.local"  # the images' registry part: never pulled from (imagePullPolicy IfNotPresent)
DOCKERFILES = ("Dockerfile", "Containerfile")
IMAGES_DIR = "/var/lib/rancher/k3s/agent/images"  # k3s imports what is here at start
GIT_TIMEOUT_S, BUILD_TIMEOUT_S, COPY_TIMEOUT_S = 120, 3600, 600
REF = re.compile(r"^(?!-)(?!.*\.\.)[A-Za-z0-9._/+-]{1,200}$")
SSH_TARGET = re.compile(r"^ssh://(?:(?P<user>[a-z_][a-z0-9_-]{0,31})@)?(?P<host>[A-Za-z0-9.-]{1,253}|\[[0-9a-fA-F:]+\])"
                        r"(?::(?P<port>[0-9]{1,5}))?/?$")
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "GIT_ASKPASS": "/bin/false"}  # never a prompt


def fail(message: str, hint: str, path: str = "") -> BasaltError:
    return BasaltError(Problem(message, path=path or None, hint=hint))


def check_source(source: str) -> str:
    """A git URL (https, http, ssh, git, file) or a local directory; never an option or a transport
    that runs a command (``ext::``)."""
    if not source or source.startswith("-") or "\n" in source or len(source) > 2048:
        raise fail(f"{source!r} is not a git URL or a directory", "e.g. https://git.site/shop.git or ./shop", "SOURCE")
    if os.path.isdir(source):
        return os.path.abspath(source)
    scheme = urllib.parse.urlsplit(source).scheme
    if scheme not in ("https", "http", "ssh", "git", "file") and not re.match(r"^[\w.-]+@[\w.-]+:", source):
        raise fail(f"{source!r} is not a git URL or a directory",
                   "https://, ssh://, git://, file:// or USER@HOST:PATH, or a directory", "SOURCE")
    return source


def check_ref(ref: str) -> str:
    if not REF.fullmatch(ref):
        raise fail(f"{ref!r} is not a branch, tag or commit", "e.g. main, v1.2 or a commit's hex", "--ref")
    return ref


def git(args: list[str], cwd: Path | None = None, what: str = "git") -> str:
    proc = host.run(["git", "-c", "protocol.ext.allow=never", "-c", "protocol.fd.allow=never", *args],
                    what=what, cwd=cwd, timeout=GIT_TIMEOUT_S,
                    env={**os.environ, **GIT_ENV}, hint="check SOURCE and --ref, and that this host reaches it")
    return proc.stdout.decode(errors="replace")


def resolve(source: str, ref: str) -> str:
    """The commit ``ref`` names in ``source`` now (bounded)."""
    if os.path.isdir(source):
        return git(["-C", source, "rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}"],
                   what=f"{source}: {ref}").strip()
    out = git(["ls-remote", "--end-of-options", source, ref], what=f"{source}: {ref}")
    for line in out.splitlines():
        commit, _, name = line.partition("\t")
        if name in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}"):
            return commit
    raise fail(f"{source}: no branch or tag {ref!r}", "git ls-remote SOURCE lists what there is", "--ref")


def checkout(source: str, ref: str, dest: Path) -> tuple[str, Path]:
    """``ref`` of ``source`` in ``dest`` (its files only: the history is not kept): the commit it
    names and its Dockerfile. Fetched by name, which every git server serves (not every one serves
    a bare commit id)."""
    git(["init", "-q", str(dest)])
    git(["-C", str(dest), "fetch", "-q", "--depth", "1", "--end-of-options", source, ref],
        what=f"fetching {ref} from {source}")
    git(["-C", str(dest), "checkout", "-q", "FETCH_HEAD"])
    commit = git(["-C", str(dest), "rev-parse", "HEAD"]).strip()
    for name in DOCKERFILES:
        if (dest / name).is_file() and not (dest / name).is_symlink():
            return commit, dest / name
    raise fail(f"{source} at {commit[:12]} has no Dockerfile", "add a Dockerfile (or Containerfile) at the "
               "repository's top; the image is built from it", "SOURCE")


def storage(root: Path) -> list[str]:
    """buildah's storage, of its own (vfs: works on any filesystem, in any container)."""
    return ["--root", str(root / "storage"), "--runroot", str(root / "run"), "--storage-driver", "vfs"]


@dataclass(frozen=True)
class Built:
    image: str
    commit: str
    archive: Path
    sha256: str
    size: int


def build(source: str, ref: str, name: str, out: Path, store: Path | None = None) -> Built:
    """Build ``ref`` of ``source`` for app ``name``: its archive in ``out``, with a manifest beside."""
    spec.check_name(name, "--name")
    source, ref = check_source(source), check_ref(ref)
    store = store or cache_root() / "buildah"
    with tempfile.TemporaryDirectory(prefix="basalt-app-build-") as tmp:
        commit, dockerfile = checkout(source, ref, Path(tmp) / "src")  # the commit the ref names now
        image = f"{REGISTRY}/{name}:{commit[:12]}"
        with progress.step(f"Building {image} from {source} at {commit[:12]} (buildah)"):
            host.run(["buildah", *storage(store), "bud", "--isolation", "chroot", "--layers=false", "-q",
                      "--pull=never", "-f", str(dockerfile), "-t", image, str(dockerfile.parent)],
                     what=f"building {name} at {commit[:12]}", timeout=BUILD_TIMEOUT_S,
                     hint="the Dockerfile's step above failed; a FROM image must be in buildah's storage "
                          f"({store}) or a registry this host reaches")
    out.mkdir(parents=True, exist_ok=True)
    archive = out / f"{name}-{commit[:12]}.tar"
    partial = archive.with_suffix(".tar.part")
    partial.unlink(missing_ok=True)
    host.run(["buildah", *storage(store), "push", "-q", image, f"docker-archive:{partial}:{image}"],
             what=f"writing {archive.name}", timeout=COPY_TIMEOUT_S)
    os.replace(partial, archive)  # complete or absent: never a half-written archive under its name
    built = Built(image, commit, archive, sha256_file(archive), archive.stat().st_size)
    (out / f"{name}-{commit[:12]}.manifest.json").write_text(json.dumps(
        {"image": image, "source": source, "ref": ref, "commit": commit,
         "artifacts": [{"file": archive.name, "size": built.size, "sha256": built.sha256}]}, indent=2) + "\n")
    progress.log(f"{image}: {archive} ({built.size / 1048576:.1f} MiB, sha256 {built.sha256[:12]}...)")
    return built


def ssh_base(target: str, identity: str | None, known_hosts: str | None) -> tuple[list[str], str]:
    """(ssh argv, USER@HOST) for ``ssh://[USER@]HOST[:PORT]``."""
    m = SSH_TARGET.fullmatch(target)
    if not m:
        raise fail(f"{target!r} is not ssh://[USER@]HOST[:PORT]", "e.g. ssh://root@10.0.0.7:22", "--deliver")
    opts = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=20"]
    if identity:
        opts += ["-i", identity]
    if known_hosts:
        opts += ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=accept-new"]
    port = m.group("port") or "22"
    where = f"{m.group('user') or 'root'}@{m.group('host')}"
    return ["ssh", *opts, "-p", port], where


def deliver(built: Built, target: str, identity: str | None = None, known_hosts: str | None = None) -> str:
    """Put the image where the node's containerd has it; what was done, in words."""
    if target.startswith("ssh://"):
        ssh, where = ssh_base(target, identity, known_hosts)
        remote = f"{IMAGES_DIR}/{built.archive.name}"
        host.run([*ssh, where, f"mkdir -p {IMAGES_DIR}"], what=f"reaching {where}", timeout=COPY_TIMEOUT_S)
        with progress.step(f"Copying {built.archive.name} to {where}"), built.archive.open("rb") as f:
            # streamed through the shell (a node's SSH server may have no scp or sftp), then renamed
            host.run([*ssh, where, f"cat > {remote}.part"], what=f"copying to {where}", timeout=COPY_TIMEOUT_S,
                     stdin=f)
        said = host.run([*ssh, where, f"sha256sum {remote}.part"], what=f"checking the copy on {where}",
                        timeout=COPY_TIMEOUT_S).stdout.decode(errors="replace").split()[:1]
        if said != [built.sha256]:
            host.run([*ssh, where, f"rm -f {remote}.part"], what=f"removing the damaged copy on {where}",
                     timeout=COPY_TIMEOUT_S)
            raise fail(f"{where}: {remote} arrived damaged (sha256 {said}, sent {built.sha256}); removed",
                       "try again; check the node's disk and link", "--deliver")
        host.run([*ssh, where, f"mv {remote}.part {remote} && ctr -n k8s.io images import {remote} >/dev/null"],
                 what=f"importing {built.image} on {where}", timeout=COPY_TIMEOUT_S,
                 hint=f"the node needs containerd's ctr (a Basalt k3s node has it) and room in {IMAGES_DIR}")
        return f"imported into {where}'s containerd (and kept in {IMAGES_DIR} for k3s to import at start)"
    if target.startswith(("http://", "https://")) or "://" in target:
        raise fail(f"{target!r} is not a place to deliver to", "ssh://[USER@]HOST[:PORT] or a directory", "--deliver")
    directory = Path(target)
    if not directory.is_dir():
        raise fail(f"{target}: no such directory", "e.g. a node's /var/lib/rancher/k3s/agent/images, mounted",
                   "--deliver")
    # never through a link planted in the directory: a new file beside, then renamed (agent/files.py)
    with files.Replacing(str(directory / built.archive.name), 0o644) as out, built.archive.open("rb") as f:
        shutil.copyfileobj(f, out, 1 << 20)
    return f"copied to {directory}"


def push(built: Built, registry: str, store: Path | None = None, tls_verify: bool = True) -> str:
    if not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[a-z0-9._/-]+)?", registry):
        raise fail(f"{registry!r} is not a registry", "HOST[:PORT][/PATH], e.g. registry.site:5000/apps", "--registry")
    name = built.image.split("/", 1)[1]
    dest = f"{registry.rstrip('/')}/{name}"
    host.run(["buildah", *storage(store or cache_root() / "buildah"), "push", "-q",
              f"--tls-verify={'true' if tls_verify else 'false'}", built.image, f"docker://{dest}"],
             what=f"pushing {dest}", timeout=COPY_TIMEOUT_S)
    return dest


def stage(kubeconfig: str | None, name: str, namespace: str, image: str) -> None:
    argv = [*(["--kubeconfig", kubeconfig] if kubeconfig else []), "-n", namespace, "stage", name, image]
    from agent.apps import cli
    if cli.standalone(argv) != 0:
        raise fail(f"{name}: the new revision was not staged", "the reason is above; the image is delivered")


def require_app(kubeconfig: str | None, name: str, namespace: str) -> None:
    """The app is there to stage into: checked before anything is built."""
    from agent.apps import kube, resources
    client = kube.Client(kube.credentials(kubeconfig))
    objects = client.list("TraefikService", namespace, f"{spec.APP}={name}")
    if resources.read(objects, name, namespace) is None:
        raise fail(f"no app {name} in namespace {namespace}", f"make it first: basalt app run IMAGE --name {name} "
                   "--port PORT; each build after is staged as a new revision", "--name")


def once(args: Any, commit: str | None = None) -> Built:
    built = build(args.source, args.ref, args.name, Path(args.out), Path(args.store) if args.store else None)
    image = built.image
    if args.deliver:
        progress.log(f"{image}: {deliver(built, args.deliver, args.identity, args.known_hosts)}")
    if args.registry:
        image = push(built, args.registry, Path(args.store) if args.store else None, not args.insecure_registry)
        progress.log(f"{built.image}: pushed as {image}")
    if not args.no_stage:
        stage(args.kubeconfig, args.name, args.namespace, image)
    return built


def watch(args: Any, stop: threading.Event, interval: float) -> list[Built]:
    """Each new commit of the ref, built, delivered and staged, until ``stop``; a failed build is
    said and the next commit tried (the app stays as it was)."""
    done: list[Built] = []
    last = ""
    while not stop.is_set():
        commit = ""
        try:
            commit = resolve(check_source(args.source), check_ref(args.ref))
            if commit != last:
                done.append(once(args))
        except BasaltError as exc:
            progress.log(exc.render())
        last = commit or last  # a commit that failed is not built again and again: the next one is
        stop.wait(interval)
    return done


def main(args: Any) -> int:
    spec.check_name(args.name, "--name")
    if not args.no_stage:
        require_app(args.kubeconfig, args.name, args.namespace)
    if not args.watch:
        once(args)
        return 0
    interval = spec.parse_interval(args.interval, "--interval")
    stop = threading.Event()
    try:
        watch(args, stop, interval)
    except KeyboardInterrupt:
        stop.set()
    return 0

