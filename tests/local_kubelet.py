"""A stand-in for the Kubernetes API server and kubelet, for tests: a created pod's container runs as a local process.

No cluster can run here. Everything above the API calls is real (PipesK8sClient, its pod body, its log reader and
Pipes protocol, the launcher, the workload); this class takes the place of `DagsterKubernetesClient` and does what a
kubelet would: it validates the pod it is sent, empties the pod's emptyDir volumes, resolves Secret references,
runs the first container's exact `command` with exactly the pod's environment (plus PATH-like basics the image
has), and serves the process's output as the pod log with kubelet timestamps.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.k8s.validate import validate_manifest
from pipeline.paths import PROJECT_ROOT

# what the image's own environment provides (PATH, HOME, locale); the host's AWS_*, DAGSTER_* never reach a pod
IMAGE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")


class PodFailed(Exception):
    pass


class LocalPod:
    def __init__(self, manifest: dict[str, Any], secrets: dict[str, dict[str, str]]):
        self.manifest = manifest
        container = manifest["spec"]["containers"][0]
        self.command = container["command"]
        self.env = {k: os.environ[k] for k in IMAGE_ENV_KEYS if k in os.environ}
        for source in container.get("envFrom", []):
            self.env.update(secrets[source["secretRef"]["name"]])
        for var in container.get("env", []):
            if "valueFrom" in var:
                ref = var["valueFrom"]["secretKeyRef"]
                self.env[var["name"]] = secrets[ref["name"]][ref["key"]]
            else:
                self.env[var["name"]] = var["value"]
        for mount in container.get("volumeMounts", []):
            if mount["mountPath"] != "/dev/shm":  # a fresh pod gets empty emptyDirs (another node's disk)
                shutil.rmtree(mount["mountPath"], ignore_errors=True)
                Path(mount["mountPath"]).mkdir(parents=True)
        self.lines: list[bytes] = []
        self.process = subprocess.Popen(self.command, env=self.env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT)
        self._last_ns = 0
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            now = max(time.time_ns(), self._last_ns + 1000)  # distinct, increasing, as a kubelet's are
            self._last_ns = now
            stamp = datetime.fromtimestamp(now / 1e9, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
            self.lines.append(stamp.encode() + b" " + line)

    def log_stream(self):
        sent = 0
        while True:
            done = not self.reader.is_alive()
            while sent < len(self.lines):
                yield self.lines[sent]
                sent += 1
            if done:
                return
            time.sleep(0.05)

    def text(self) -> str:
        return b"".join(self.lines).decode(errors="replace")


class LocalKubelet:
    """Use as `DagsterKubernetesClient.production_client` (it is its own `core_api`)."""

    def __init__(self, secrets: dict[str, dict[str, str]] | None = None,
                 kill_when: Callable[[LocalPod], bool] | None = None):
        self.secrets = secrets or {}
        self.kill_when = kill_when  # checked while the first pod runs; True kills it (a lost node)
        self.pods: dict[str, LocalPod] = {}
        self.killed: list[str] = []

    @property
    def core_api(self):
        return self

    def __call__(self, *args, **kwargs):
        return self

    # -- the API calls PipesK8sClient makes --
    def create_namespaced_pod(self, namespace: str, body) -> None:
        import kubernetes

        manifest = kubernetes.client.ApiClient().sanitize_for_serialization(body)
        manifest = {"apiVersion": "v1", "kind": "Pod", **manifest}
        validate_manifest(manifest)  # what the API server would refuse, this refuses
        name = manifest["metadata"]["name"]
        self.pods[name] = LocalPod(manifest, self.secrets)
        if self.kill_when and len(self.pods) == 1:
            threading.Thread(target=self._watch, args=(name,), daemon=True).start()

    def _watch(self, name: str) -> None:
        pod = self.pods[name]
        while pod.process.poll() is None:
            if self.kill_when(pod):
                pod.process.send_signal(signal.SIGKILL)
                self.killed.append(name)
                return
            time.sleep(0.05)

    def wait_for_pod(self, pod_name: str, namespace: str, wait_for_state=None, **_) -> None:
        from dagster_k8s.client import WaitForPodState

        pod = self.pods[pod_name]
        if wait_for_state == WaitForPodState.Terminated:
            code = pod.process.wait()
            if code != 0:
                raise PodFailed(f"pod {pod_name} failed with exit code {code}:\n{pod.text()[-3000:]}")

    def read_namespaced_pod_log(self, name: str, namespace: str, **_):
        return self.pods[name].log_stream()

    def delete_namespaced_pod(self, name: str, namespace: str) -> None:
        pod = self.pods[name]
        if pod.process.poll() is None:
            pod.process.kill()
            pod.process.wait()


class LocalKubeflow:
    """A stand-in for Kubeflow Trainer and the API server for TrainJobs: a created TrainJob (validated against its
    CRD) starts `numNodes` local processes running the trainer's exact command and environment plus the PET_*
    variables Kubeflow Trainer's torch plugin injects. Each node gets its own disk: the spec's `output_dir` under
    `pod_work_dir` is moved to `disk(rank)`, since two machines never share one."""

    def __init__(self, secrets: dict[str, dict[str, str]], pod_work_dir: str, disk: Callable[[int], Path]):
        self.secrets, self.pod_work_dir, self.disk = secrets, pod_work_dir, disk
        self.jobs: dict[str, dict[str, Any]] = {}
        self.nodes: dict[str, list[LocalPod]] = {}
        self.deleted: list[str] = []

    @property
    def core_api(self):
        return self

    def __call__(self, *args, **kwargs):
        return self

    def create_namespaced_custom_object(self, group, version, namespace, plural, body) -> None:
        import json
        import socket

        from pipeline.training.remote import SPEC_ENV

        validate_manifest(body)
        name, trainer = body["metadata"]["name"], body["spec"]["trainer"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.jobs[name], self.nodes[name] = body, []
        for rank in range(trainer["numNodes"]):
            env = [dict(e) for e in trainer["env"]]
            for var in env:
                if var["name"] == SPEC_ENV:
                    spec = json.loads(var["value"])
                    spec["output_dir"] = spec["output_dir"].replace(self.pod_work_dir, str(self.disk(rank)), 1)
                    var["value"] = json.dumps(spec)
            env += [{"name": k, "value": v} for k, v in {
                "PET_NNODES": str(trainer["numNodes"]), "PET_NPROC_PER_NODE": str(trainer["numProcPerNode"]),
                "PET_NODE_RANK": str(rank), "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}.items()]
            container = {"command": trainer["command"], "env": env, "volumeMounts": []}
            self.nodes[name].append(LocalPod({"spec": {"containers": [container]}}, self.secrets))

    def list_namespaced_pod(self, namespace: str, label_selector: str):
        from types import SimpleNamespace

        from pipeline.k8s.trainjob import rank_zero_selector

        items = [SimpleNamespace(metadata=SimpleNamespace(name=f"{name}-node-0-0"), status=SimpleNamespace(phase="Running"))
                 for name in self.nodes if label_selector == rank_zero_selector(name)]
        return SimpleNamespace(items=items)

    def read_namespaced_pod_log(self, name: str, namespace: str, **_):
        return self.nodes[name.rsplit("-node-", 1)[0]][0].log_stream()

    def get_namespaced_custom_object(self, group, version, namespace, plural, name) -> dict[str, Any]:
        codes = [node.process.poll() for node in self.nodes[name]]
        if any(code is None for code in codes):
            return {"status": {}}
        outcome = "Complete" if all(code == 0 for code in codes) else "Failed"
        return {"status": {"conditions": [{"type": outcome, "status": "True"}]}}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **_) -> None:
        self.deleted.append(name)
        for node in self.nodes[name]:
            if node.process.poll() is None:
                node.process.kill()
                node.process.wait()
