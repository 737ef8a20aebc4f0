"""The host the host plays run against: a network namespace (10.231.12.2, a veth pair to this
machine's 10.231.12.1) with its own mount namespace, running sshd with a key the test makes.
Its /run, /var/lib/docker, /var/lib/containerd, /etc/docker and /var/log are directories of
the test, so the Docker engine the playbook starts there shares nothing with this machine's
(the test points eventpost_image_dir into the private /run too).
The file system is otherwise this machine's own: apt sees the packages .ci/run installed.

Debian's /etc/init.d/docker raises ulimits a container may not raise; the host gets a copy
without those lines (bound over the original inside its namespace only)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

NETNS = "ep-testhost"
HOST_IP = "10.231.12.2"
PEER_IP = "10.231.12.1"
VETH = ("ep-th0", "ep-th1")
PRIVATE = (
    "/run",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/etc/docker",
    "/var/log",
)

_START = """set -e
mkdir -p {root}/cgroup
mount --rbind /sys/fs/cgroup {root}/cgroup
mount -t sysfs sysfs /sys
mount --rbind {root}/cgroup /sys/fs/cgroup
{binds}
mount --bind {root}/init.d-docker /etc/init.d/docker
mkdir -p /run/sshd
exec /usr/sbin/sshd -D -e -f {root}/sshd_config
"""

_SSHD = """ListenAddress {ip}
Port 22
HostKey {root}/host_key
AuthorizedKeysFile {root}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
"""


def missing_prerequisites() -> str | None:
    """Why this machine cannot host the test host, or None."""
    if os.geteuid() != 0:
        return "needs root (network and mount namespaces)"
    for tool in ("ip", "nsenter", "unshare", "/usr/sbin/sshd", "ssh-keygen", "dockerd", "busybox"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs it)"
    if not Path("/etc/init.d/docker").exists():
        return "docker.io's /etc/init.d/docker is missing"
    probe = subprocess.run(["ip", "netns", "add", "ep-probe"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"cannot create a network namespace: {probe.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", "ep-probe"], check=False)
    return None


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@dataclass
class TestHost:
    """The running host: its address, the key that logs in as root, and sshd's process."""

    root: Path
    key: Path
    sshd: subprocess.Popen
    ip: str = HOST_IP

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        """A command inside the host's namespaces (e.g. ``docker ps``)."""
        return subprocess.run(
            ["nsenter", f"--target={self.sshd.pid}", "--mount", "--net", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def start(root: Path) -> TestHost:
    """Create the namespace, the keys and sshd; wait until sshd answers."""
    stop_leftovers()
    for directory in PRIVATE:
        (root / directory.strip("/").replace("/", "-")).mkdir(parents=True, exist_ok=True)
    _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "host_key"))
    key = root / "id_ed25519"
    _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    shutil.copy(key.with_suffix(".pub"), root / "authorized_keys")
    (root / "sshd_config").write_text(_SSHD.format(ip=HOST_IP, root=root))
    init = Path("/etc/init.d/docker").read_text().splitlines()
    (root / "init.d-docker").write_text(
        "\n".join(":" if line.strip().startswith("ulimit") else line for line in init) + "\n"
    )
    (root / "init.d-docker").chmod(0o755)
    # The mount points may be missing on a machine where Docker never ran (its package makes
    # /var/lib/docker only when the daemon first starts): made empty, as dockerd would.
    binds = "\n".join(
        f"mkdir -p {d}\nmount --bind {root / d.strip('/').replace('/', '-')} {d}" for d in PRIVATE
    )
    (root / "start.sh").write_text(_START.format(root=root, binds=binds))

    _sh("ip", "netns", "add", NETNS)
    _sh("ip", "link", "add", VETH[0], "type", "veth", "peer", "name", VETH[1])
    _sh("ip", "link", "set", VETH[1], "netns", NETNS)
    _sh("ip", "addr", "add", f"{PEER_IP}/24", "dev", VETH[0])
    _sh("ip", "link", "set", VETH[0], "up")
    inside = ("ip", "netns", "exec", NETNS)
    _sh(*inside, "ip", "addr", "add", f"{HOST_IP}/24", "dev", VETH[1])
    _sh(*inside, "ip", "link", "set", VETH[1], "up")
    _sh(*inside, "ip", "link", "set", "lo", "up")
    log = (root / "sshd.log").open("w")
    sshd = subprocess.Popen(
        [
            "nsenter",
            f"--net=/run/netns/{NETNS}",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            str(root / "start.sh"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection((HOST_IP, 22), timeout=1).close()
            break
        except OSError:
            if sshd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"sshd did not start: {(root / 'sshd.log').read_text()}"
                ) from None
            time.sleep(0.2)
    return TestHost(root=root, key=key, sshd=sshd)


def stop(host: TestHost) -> None:
    """Stop the Docker engine the playbook started (its containers with it), sshd, the
    namespace; the test's directories go with the test's tmp_path."""
    containers = host.run("docker", "ps", "-aq").stdout.split()
    if containers:
        host.run("docker", "rm", "--force", *containers)
    host.run("service", "docker", "stop")
    host.sshd.terminate()
    host.sshd.wait(timeout=30)
    # Whatever still runs in the namespace was started there by the test (SSH sessions that
    # outlive sshd, a container's shim): end those processes, by their ids.
    pids = subprocess.run(
        ["ip", "netns", "pids", NETNS], capture_output=True, text=True, check=False
    ).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    stop_leftovers()


def stop_leftovers() -> None:
    """Remove the namespace and the veth pair of an earlier run (the peer goes with it)."""
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", VETH[0]], capture_output=True, check=False)


def busybox_image(path: Path, tag: str, port: int, body: str) -> None:
    """A one-layer image archive (``docker save`` format) built on the spot: a static busybox
    serving ``body`` over HTTP on ``port``. No registry is reachable here, so the playbook
    loads this archive where on AWS it pulls the image."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        for directory in ("bin", "www"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(shutil.which("busybox"), "bin/busybox")
        page = body.encode()
        info = tarfile.TarInfo("www/index.html")
        info.size, info.mode = len(page), 0o644
        tar.addfile(info, io.BytesIO(page))
    blob = layer.getvalue()
    diff_id = hashlib.sha256(blob).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/busybox", "httpd", "-f", "-p", str(port), "-h", "/www"]},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        }
    ).encode()
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": [tag], "Layers": [f"{diff_id}/layer.tar"]}]
    ).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in (
            (f"{diff_id}/layer.tar", blob),
            (config_name, config),
            ("manifest.json", manifest),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
