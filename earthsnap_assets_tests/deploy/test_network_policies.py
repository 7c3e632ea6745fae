"""deploy/k8s/networkpolicies.yaml: who may talk to whom, evaluated with NetworkPolicy semantics over the real labels.

The pods' labels come from the manifests (serving, MLflow, Label Studio) and from the Helm values (the pipeline's
code server, run and step pods); the policies are evaluated the way the API defines them (a pod selected by no
policy of a direction is open in that direction; selected by any, only what some rule allows passes). The schema
itself is checked with every manifest in test_k8s_manifests.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from earthsnap_assets_tests.deploy.k8s_schema import k8s_documents

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
NAMESPACE = "earthsnap"
INGRESS_NAMESPACE = "ingress-nginx"


@dataclass(frozen=True)
class Peer:
    """A pod (labels, namespace) or an address outside the cluster (ip)."""

    labels: dict[str, str] = field(default_factory=dict)
    namespace: str | None = NAMESPACE
    ip: str | None = None

    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace} if self.namespace else {}


def policies() -> list[dict[str, Any]]:
    return [doc for doc in k8s_documents(K8S / "networkpolicies.yaml") if doc["kind"] == "NetworkPolicy"]


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against labels; {} selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


def peer_matches(rule_peer: dict[str, Any], peer: Peer, policy_namespace: str) -> bool:
    if "ipBlock" in rule_peer:
        if peer.ip is None:
            return False  # pod IPs and ipBlock: implementation-defined; the policies here never rely on it
        block = rule_peer["ipBlock"]
        address = ipaddress.ip_address(peer.ip)
        inside = address in ipaddress.ip_network(block["cidr"])
        return inside and not any(address in ipaddress.ip_network(e) for e in block.get("except", []))
    if peer.ip is not None:
        return False
    if "namespaceSelector" in rule_peer:
        if not selects(rule_peer["namespaceSelector"], peer.namespace_labels()):
            return False
    elif peer.namespace != policy_namespace:
        return False
    return "podSelector" not in rule_peer or selects(rule_peer["podSelector"], peer.labels)


def port_matches(rule_ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    if not rule_ports:
        return True
    return any(p.get("protocol", "TCP") == protocol and p.get("port") in (None, port) for p in rule_ports)


def allowed(direction: str, subject: Peer, other: Peer, port: int, protocol: str = "TCP") -> bool:
    """Ingress: may `other` connect to `subject`? Egress: may `subject` connect to `other`?"""
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    applying = [
        policy
        for policy in policies()
        if policy["metadata"]["namespace"] == subject.namespace
        and direction in policy["spec"]["policyTypes"]
        and selects(policy["spec"]["podSelector"], subject.labels)
    ]
    if not applying:
        return True
    for policy in applying:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if (not peers or any(peer_matches(p, other, policy["metadata"]["namespace"]) for p in peers)) and (
                port_matches(rule.get("ports"), port, protocol)
            ):
                return True
    return False


def can_connect(source: Peer, target: Peer, port: int, protocol: str = "TCP") -> bool:
    """Both ends must let the connection through: the source's egress and the target's ingress."""
    egress = source.ip is not None or allowed("Egress", source, target, port, protocol)
    ingress = target.ip is not None or allowed("Ingress", target, source, port, protocol)
    return egress and ingress


# --- the pods, with the labels they really get --------------------------------------------------------------------


def template_labels(file: str, name: str) -> dict[str, str]:
    (doc,) = [d for d in k8s_documents(K8S / file) if d["kind"] == "Deployment" and d["metadata"]["name"] == name]
    return doc["spec"]["template"]["metadata"]["labels"]


def container_port(file: str, name: str) -> int:
    (doc,) = [d for d in k8s_documents(K8S / file) if d["kind"] == "Deployment" and d["metadata"]["name"] == name]
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    (port,) = container["ports"]
    return port["containerPort"]


def helm_values() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "deploy" / "helm" / "dagster-values.yaml").read_text(encoding="utf-8"))


def pipeline_pods() -> dict[str, Peer]:
    """The code server (chart labels + the deployment's), run and step pods (dagster-k8s's + the launcher's)."""
    from dagster_k8s.utils import get_common_labels

    values = helm_values()
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    code_server = {"component": "user-deployments", "deployment": deployment["name"], **deployment["labels"]}
    run = {**get_common_labels(), "app.kubernetes.io/component": "run_worker", **launcher["labels"]}
    step = {**get_common_labels(), "app.kubernetes.io/component": "step_worker", **launcher["labels"]}
    # includeConfigInLaunchedRuns: the user deployment's labels reach run and step pods too.
    run.update(deployment["labels"])
    step.update(deployment["labels"])
    return {"code server": Peer(code_server), "run pod": Peer(run), "step pod": Peer(step)}


STAGING = Peer(template_labels("serving-staging.yaml", "earthsnap-staging"))
PRODUCTION = Peer(template_labels("serving-production.yaml", "earthsnap-production"))
MLFLOW = Peer(template_labels("mlflow.yaml", "mlflow"))
LABEL_STUDIO = Peer(template_labels("label-studio.yaml", "label-studio"))
INGRESS = Peer({"app.kubernetes.io/name": "ingress-nginx"}, namespace=INGRESS_NAMESPACE)
KUBE_DNS = Peer({"k8s-app": "kube-dns"}, namespace="kube-system")
WEBSERVER = Peer({"component": "dagster-webserver"})
DAEMON = Peer({"component": "dagster-daemon"})
STRANGER_HERE = Peer({"app": "something-else"})
STRANGER_ELSEWHERE = Peer({"app.kubernetes.io/name": "earthsnap-serving"}, namespace="default")
S3 = Peer(ip="52.216.10.1")
SERVING_PORT = container_port("serving-staging.yaml", "earthsnap-staging")
MLFLOW_PORT = container_port("mlflow.yaml", "mlflow")
REVIEW_PORT = container_port("label-studio.yaml", "label-studio")


# --- tests --------------------------------------------------------------------------------------------------------


def test_kustomization_applies_the_policies() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert "networkpolicies.yaml" in kustomization["resources"]


def test_ingress_is_denied_by_default() -> None:
    (deny,) = [p for p in policies() if p["spec"]["podSelector"] == {} and "Ingress" in p["spec"]["policyTypes"]]
    assert not deny["spec"].get("ingress"), "a default-deny policy has no rules"
    for target, port in ((STAGING, SERVING_PORT), (MLFLOW, MLFLOW_PORT), (LABEL_STUDIO, REVIEW_PORT)):
        assert not can_connect(STRANGER_HERE, target, port), target.labels
        assert not can_connect(STRANGER_ELSEWHERE, target, port), target.labels
    assert not can_connect(STRANGER_HERE, Peer({"some": "new-pod"}), 8080), "a new pod is closed until allowed"


def test_policy_selectors_match_real_pods() -> None:
    """A selector with a typo would silently select nothing (and the default deny would cut the service off)."""
    pods = [STAGING, PRODUCTION, MLFLOW, LABEL_STUDIO, WEBSERVER, DAEMON, *pipeline_pods().values()]
    for policy in policies():
        selector = policy["spec"]["podSelector"]
        assert any(selects(selector, pod.labels) for pod in pods), policy["metadata"]["name"]
        for rule in [*policy["spec"].get("ingress", []), *policy["spec"].get("egress", [])]:
            for peer in [*rule.get("from", []), *rule.get("to", [])]:
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert any(selects(peer["podSelector"], pod.labels) for pod in pods), (
                        f"{policy['metadata']['name']}: {peer} selects no pod of this namespace"
                    )


@pytest.mark.parametrize("pod", ["code server", "run pod", "step pod"])
def test_the_pipeline_reaches_mlflow_label_studio_and_both_endpoints(pod: str) -> None:
    source = pipeline_pods()[pod]
    assert can_connect(source, MLFLOW, MLFLOW_PORT)
    assert can_connect(source, LABEL_STUDIO, REVIEW_PORT)
    assert can_connect(source, STAGING, SERVING_PORT), "stage tests call staging over HTTP"
    assert can_connect(source, PRODUCTION, SERVING_PORT)
    assert not can_connect(source, MLFLOW, 5432), "only the service port"


def test_people_come_in_through_the_ingress_only_where_they_should() -> None:
    assert can_connect(INGRESS, PRODUCTION, SERVING_PORT)
    assert can_connect(INGRESS, MLFLOW, MLFLOW_PORT), "the MLflow UI (approvals)"
    assert can_connect(INGRESS, LABEL_STUDIO, REVIEW_PORT), "reviewers"
    assert can_connect(INGRESS, WEBSERVER, 3000)
    assert not can_connect(INGRESS, STAGING, SERVING_PORT), "staging serves stage tests only"


def test_dagster_keeps_working() -> None:
    code_server = pipeline_pods()["code server"]
    assert can_connect(WEBSERVER, code_server, 4000) and can_connect(DAEMON, code_server, 4000)
    assert not can_connect(STAGING, code_server, 4000)


@pytest.mark.parametrize("serving", [STAGING, PRODUCTION], ids=["staging", "production"])
def test_serving_reaches_only_mlflow_dns_and_s3(serving: Peer) -> None:
    assert can_connect(serving, MLFLOW, MLFLOW_PORT)
    assert can_connect(serving, KUBE_DNS, 53, "UDP") and can_connect(serving, KUBE_DNS, 53, "TCP")
    assert can_connect(serving, S3, 443)
    assert not can_connect(serving, S3, 80), "HTTPS only"
    assert not can_connect(serving, LABEL_STUDIO, REVIEW_PORT)
    assert not can_connect(serving, pipeline_pods()["code server"], 4000)
    assert not can_connect(serving, PRODUCTION if serving is STAGING else STAGING, SERVING_PORT)
    assert not can_connect(serving, Peer({"k8s-app": "kube-dns"}, namespace="kube-system"), 443)
    assert not allowed("Egress", serving, MLFLOW, REVIEW_PORT), "MLflow on its port only"


def test_policy_ports_are_the_container_ports() -> None:
    """NetworkPolicy ports are the pods' ports (not the Services' 80): a Service port here would block everything."""
    expected = {
        "earthsnap-production-ingress": SERVING_PORT,
        "earthsnap-staging-ingress": SERVING_PORT,
        "mlflow-ingress": MLFLOW_PORT,
        "label-studio-ingress": REVIEW_PORT,
        "dagster-code-server-ingress": helm_values()["dagster-user-deployments"]["deployments"][0]["port"],
        "dagster-webserver-ingress": helm_values()["dagsterWebserver"]["service"]["port"],
    }
    for policy in policies():
        name = policy["metadata"]["name"]
        if name in expected:
            ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
            assert ports == {expected[name]}, name
