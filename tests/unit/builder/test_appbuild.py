"""Builds from git on the build host (builder/appbuild.py): a real git repository, Debian's real
``buildah`` (no daemon; RUN steps in a chroot), a base image built here from Debian's static
busybox (no registry), the archive delivered and the revision staged against the API stand-in
(tests/fake_kube.py: no k3s here). Delivery over SSH into a real containerd is in
tests/boot/test_containers.py."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from buildah import commit, dockerfile, git, make_base, repository
from fake_kube import FakeKube

from agent.apps import cli as app_cli
from builder import appbuild, progress
from builder import cli as builder_cli


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """buildah's storage with the base image: Debian's static busybox (the host's busybox-static)."""
    return make_base(tmp_path_factory.mktemp("buildah"), Path("/bin/busybox"))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[FakeKube, str, Path]]:
    repo = repository(tmp_path / "shop")
    with FakeKube() as api:
        conf = str(api.kubeconfig(tmp_path / "kubeconfig"))
        assert app_cli.standalone(["--kubeconfig", conf, "run", "nginx:1.27", "--name", "shop", "--port", "8080",
                                   "--tls", "off"]) == 0
        yield api, conf, repo


def images(api: FakeKube) -> dict[str, str]:
    with api.lock:
        return {o["metadata"]["name"]: o["spec"]["template"]["spec"]["containers"][0]["image"]
                for (k, _, _), o in api.objects.items() if k == "Deployment"}


def layer_files(archive: Path) -> dict[str, bytes]:
    """Every file in the image's layers (docker-archive), by path."""
    out: dict[str, bytes] = {}
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        for layer in manifest[0]["Layers"]:
            with tarfile.open(fileobj=tar.extractfile(layer)) as inner:  # type: ignore[arg-type]
                for m in inner.getmembers():
                    if m.isfile():
                        out[m.name.lstrip("./")] = inner.extractfile(m).read()  # type: ignore[union-attr]
    return out


def test_a_commit_is_built_delivered_and_staged(site: tuple[FakeKube, str, Path], store: Path,
                                                tmp_path: Path) -> None:
    api, conf, repo = site
    head = git(repo, "rev-parse", "HEAD")
    node_images = tmp_path / "node-images"
    node_images.mkdir()
    out = tmp_path / "out"
    assert builder_cli.main(["app-build", str(repo), "--name", "shop", "--ref", "main", "--kubeconfig", conf,
                             "--store", str(store), "-o", str(out), "--deliver", str(node_images)]) == 0
    image = f"basalt.local/shop:{head[:12]}"
    archive = out / f"shop-{head[:12]}.tar"
    manifest = json.loads((out / f"shop-{head[:12]}.manifest.json").read_text())
    assert manifest["image"] == image and manifest["commit"] == head
    assert manifest["artifacts"] == [{"file": archive.name, "size": archive.stat().st_size,
                                      "sha256": appbuild.sha256_file(archive)}]
    with tarfile.open(archive) as tar:
        assert json.loads(tar.extractfile("manifest.json").read())[0]["RepoTags"] == [image]  # type: ignore[union-attr]
    files = layer_files(archive)
    assert files["srv/hello.txt"] == b"hello-v1\n" and files["srv/run.txt"] == b"built-by-run\n"  # RUN ran
    assert (node_images / archive.name).read_bytes() == archive.read_bytes()
    assert sorted(p.name for p in node_images.iterdir()) == [archive.name] and not list(out.glob("*.part"))
    # staged: a new revision at 0%, the first one untouched
    assert images(api) == {"shop-v1": "nginx:1.27", "shop-v2": image}
    assert api.weights("shop") == {"v1": 100, "v2": 0}


def test_watch_stages_each_new_commit_and_skips_a_broken_one(site: tuple[FakeKube, str, Path], store: Path,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api, conf, repo = site
    said = io.StringIO()
    monkeypatch.setattr(progress, "_stream", said)
    args = SimpleNamespace(source=str(repo), ref="main", name="shop", namespace="default", kubeconfig=conf,
                           out=str(tmp_path / "out"), store=str(store), deliver=None, identity=None,
                           known_hosts=None, registry=None, insecure_registry=False, no_stage=False)
    stop = threading.Event()
    done: list[Any] = []
    thread = threading.Thread(target=lambda: done.extend(appbuild.watch(args, stop, 0.2)), daemon=True)
    thread.start()
    try:
        def until(check: Any, what: str) -> None:
            deadline = time.monotonic() + 60
            while not check():
                assert time.monotonic() < deadline, f"{what}: {images(api)}"
                time.sleep(0.1)
        first = git(repo, "rev-parse", "HEAD")
        until(lambda: "shop-v2" in images(api), "the first commit")
        broken = commit(repo, {"Dockerfile": dockerfile(run="false")}, "a step that fails")
        time.sleep(2)  # a few polls: the broken commit is tried once, and nothing is staged
        assert set(images(api)) == {"shop-v1", "shop-v2"}
        fixed = commit(repo, {"Dockerfile": dockerfile(), "hello.txt": "hello-v3\n"}, "fixed")
        until(lambda: "shop-v3" in images(api), "the fixed commit")
    finally:
        stop.set()
        thread.join(60)
    assert images(api) == {"shop-v1": "nginx:1.27", "shop-v2": f"basalt.local/shop:{first[:12]}",
                           "shop-v3": f"basalt.local/shop:{fixed[:12]}"}
    assert [b.commit for b in done] == [first, fixed]
    text = said.getvalue()
    assert f"building shop at {broken[:12]} failed (exit 1):" in text and 'Error: building at STEP "RUN false"' in text


@pytest.mark.parametrize(("argv", "message"), [
    (["{tmp}/nothing-here", "--name", "shop"], "is not a git URL or a directory"),
    (["--upload-pack=touch /tmp/pwned", "--name", "shop"], "is not a git URL or a directory"),
    (["ext::sh -c touch% /tmp/pwned", "--name", "shop"], "is not a git URL or a directory"),
    (["{repo}", "--name", "shop", "--ref=--upload-pack=x"], "is not a branch, tag or commit"),
    (["{repo}", "--name", "shop", "--ref", "main..x"], "is not a branch, tag or commit"),
    (["{repo}", "--name", "shop", "--ref", "no-such-branch"], "no-such-branch"),
    (["{repo}", "--name", "Shop"], "is not a valid app name"),
    (["{repo}", "--name", "nothere"], "no app nothere in namespace default"),
    (["{repo}", "--name", "shop", "--deliver", "ssh://root@host;rm -rf /"], "is not ssh://[USER@]HOST[:PORT]"),
    (["{repo}", "--name", "shop", "--deliver", "https://node/images"], "is not a place to deliver to"),
    (["{repo}", "--name", "shop", "--deliver", "{tmp}/no-dir"], "no such directory"),
    (["{repo}", "--name", "shop", "--registry", "reg.site/$(id)"], "is not a registry"),
])
def test_bad_input_is_refused_and_nothing_is_staged(site: tuple[FakeKube, str, Path], store: Path, tmp_path: Path,
                                                   argv: list[str], message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    api, conf, repo = site
    before = images(api)
    argv = [a.format(tmp=tmp_path, repo=repo) for a in argv]
    assert builder_cli.main(["app-build", *argv, "--kubeconfig", conf, "--store", str(store),
                             "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "hint:" in err and "Traceback" not in err, err
    assert images(api) == before and not Path("/tmp/pwned").exists()


def test_a_link_planted_in_the_delivery_directory_is_not_followed(site: tuple[FakeKube, str, Path], store: Path,
                                                                   tmp_path: Path) -> None:
    _, conf, repo = site
    head = git(repo, "rev-parse", "HEAD")
    node_images = tmp_path / "node-images"
    node_images.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    name = f"shop-{head[:12]}.tar"
    for planted in (name, f"{name}.basalt-new"):  # the archive's name and the file made beside it
        (node_images / planted).symlink_to(victim)
    assert builder_cli.main(["app-build", str(repo), "--name", "shop", "--no-stage", "--kubeconfig", conf,
                             "--store", str(store), "-o", str(tmp_path / "out"), "--deliver", str(node_images)]) == 0
    assert victim.read_text() == "precious\n"
    assert not (node_images / name).is_symlink() and (node_images / name).read_bytes() == \
        (tmp_path / "out" / name).read_bytes()


@pytest.mark.parametrize(("files", "message"), [
    ({"Dockerfile": None}, "has no Dockerfile"),
    ({"Dockerfile": dockerfile(run="false")}, "building shop at"),
    ({"Dockerfile": "FROM registry.invalid/nothing:1\n"}, "building shop at"),
])
def test_a_source_that_does_not_build_stages_nothing(site: tuple[FakeKube, str, Path], store: Path,
                                                     tmp_path: Path, files: dict[str, str | None], message: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    api, conf, repo = site
    for name, text in files.items():
        if text is None:
            git(repo, "rm", "-q", name)
        else:
            (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "bad")
    before = api.get("TraefikService", "shop")["metadata"]["resourceVersion"]
    out = tmp_path / "out"
    assert builder_cli.main(["app-build", str(repo), "--name", "shop", "--kubeconfig", conf, "--store", str(store),
                             "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "hint:" in err, err
    assert api.get("TraefikService", "shop")["metadata"]["resourceVersion"] == before
    assert not out.exists() or not list(out.iterdir())  # no archive left looking finished
