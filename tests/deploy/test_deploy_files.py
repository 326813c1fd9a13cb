"""The operator files in deploy/ stay in step with the gateway: config names, ports, commands."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config, Trunk, load_config

yaml = pytest.importorskip("yaml")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
EXAMPLE = DEPLOY / "ws2sip.example.toml"


# --- example configuration ----------------------------------------------------------------

def test_example_config_loads() -> None:
    config = load_config(str(EXAMPLE), {})
    assert config.wss and config.tls_cert and config.tls_key
    assert config.public_address and config.redis and config.allowed_origins
    assert config.rtp_port_range == (20000, 40000)
    assert not config.demo_users


def test_example_config_documents_every_setting() -> None:
    # Assigned, not just mentioned in a comment: a new Config field without an example fails.
    raw = tomllib.loads(EXAMPLE.read_text())
    missing = {f.name for f in dataclasses.fields(Config)} - set(raw)
    assert not missing, f"deploy/ws2sip.example.toml lacks {sorted(missing)}"


def test_example_trunks_cover_ip_trust_and_registration() -> None:
    config = load_config(str(EXAMPLE), {})
    assert len(config.trunks) >= 2
    by_ip = [t for t in config.trunks if t.trusted_sources and t.match and not t.register]
    registering = [t for t in config.trunks if t.register and t.username and t.password]
    assert by_ip and registering
    raw = tomllib.loads(EXAMPLE.read_text())
    trunk_fields = {f.name for f in dataclasses.fields(Trunk)}
    documented = set().union(*(set(entry) for entry in raw["trunks"]))
    assert trunk_fields <= documented, f"trunk keys not shown: {trunk_fields - documented}"


def test_example_asterisk_trunk_routes_the_asterisk_dialplan_numbers() -> None:
    config = load_config(str(EXAMPLE), {})
    asterisk = next(t for t in config.trunks if t.name == "asterisk")
    pattern = re.compile(asterisk.match)
    assert pattern.fullmatch("201") and pattern.fullmatch("600") and pattern.fullmatch("0123456")
    assert not pattern.fullmatch("7001"), "web users (7xxx) must not be sent to Asterisk"


def test_example_mentions_wss_certificates() -> None:
    text = EXAMPLE.read_text().lower()
    assert "self-signed" in text and "let's encrypt" in text


# --- compose ------------------------------------------------------------------------------

def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_services_and_host_networking() -> None:
    services = _compose()["services"]
    assert {"ws2sip", "redis", "coturn"} <= set(services)
    for name in ("ws2sip", "coturn"):
        assert services[name]["network_mode"] == "host", name
    gateway = services["ws2sip"]
    assert gateway["build"]["dockerfile"] == "deploy/Containerfile"
    assert any(v.endswith(":/etc/ws2sip/ws2sip.toml:ro") for v in gateway["volumes"])
    assert "redis://127.0.0.1:6379/0" in gateway["command"]
    assert "127.0.0.1:8080/healthz" in " ".join(gateway["healthcheck"]["test"])
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--port") + 1] == "6379"
    assert redis_command[redis_command.index("--bind") + 1] == "127.0.0.1"
    coturn_volumes = " ".join(services["coturn"]["volumes"])
    assert "./coturn/turnserver.conf:" in coturn_volumes


# --- Containerfile ------------------------------------------------------------------------

def test_containerfile() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    # pip install . needs setup.py (the compiled parser) besides pyproject.toml and the packages.
    copied = " ".join(re.findall(r"^COPY (?!--from)(.+)$", text, re.M)).split()
    for needed in ("pyproject.toml", "setup.py", "./sip", "./gateway", "./webrtc"):
        assert needed in copied, needed
    assert re.search(r"^USER (?!root\b|0\b)\S+", text, re.M)
    # The same install as deploy/install.sh: the lock first, then ws2sip built against it, and
    # the self-check run in the final image, which has no compiler.
    lock_install = text.index("pip install --require-hashes -r deploy/requirements.lock")
    build = text.index("pip install --no-deps --no-build-isolation .")
    assert lock_install < build
    final_stage = text[text.rindex("\nFROM "):]
    assert re.search(r"^RUN ws2sip selfcheck$", final_stage, re.M)
    exposed = " ".join(re.findall(r"^EXPOSE (.+)$", text, re.M)).split()
    for port in ("5060/udp", "5060/tcp", "5061/tcp", "8080/tcp", "8443/tcp", "20000-40000/udp"):
        assert port in exposed
    assert re.search(
        r'^ENTRYPOINT \["ws2sip", "run", "--config", "/etc/ws2sip/ws2sip.toml"\]', text, re.M
    )


# --- Kubernetes ---------------------------------------------------------------------------

def _k8s() -> dict[tuple[str, str], dict[str, Any]]:
    documents = yaml.safe_load_all((DEPLOY / "kubernetes" / "ws2sip.yaml").read_text())
    return {(d["kind"], d["metadata"]["name"]): d for d in documents if d}


def test_kubernetes_deployment() -> None:
    objects = _k8s()
    deployment = objects[("Deployment", "ws2sip")]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    (container,) = pod["containers"]
    probe = container["readinessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": 8080}
    args = " ".join(container["args"])
    assert "--node-id=$(POD_NAME)" in args
    assert "--redis=redis://redis.ws2sip.svc.cluster.local:6379/0" in args
    assert "--auth-secret=$(WS2SIP_AUTH_SECRET)" in args
    secret_env = next(e for e in container["env"] if e["name"] == "WS2SIP_AUTH_SECRET")
    ref = secret_env["valueFrom"]["secretKeyRef"]
    assert ref["key"] in objects[("Secret", ref["name"])]["stringData"]
    assert ("Service", "redis") in objects and ("Deployment", "redis") in objects


def test_kubernetes_service_ports() -> None:
    service = _k8s()[("Service", "ws2sip")]
    ports = {(p["port"], p["protocol"]) for p in service["spec"]["ports"]}
    assert {(8080, "TCP"), (5060, "UDP"), (5060, "TCP")} <= ports


def test_kubernetes_configmap_loads(tmp_path: Path) -> None:
    config_map = _k8s()[("ConfigMap", "ws2sip-config")]
    path = tmp_path / "ws2sip.toml"
    path.write_text(config_map["data"]["ws2sip.toml"])
    config = load_config(str(path), {"node_id": "pod-a", "redis": "redis://redis:6379/0"})
    assert config.listeners()["ws"] == [("0.0.0.0", 8080)]
    assert config.media_address == "0.0.0.0"


# --- Asterisk -----------------------------------------------------------------------------

def parse_asterisk_conf(text: str) -> list[tuple[str, dict[str, list[str]]]]:
    """Sections in order as (name, {option: [values]}): names repeat, options repeat.

    Asterisk's format is not INI: `[name](!)` / `[name](template)` headers, `=` or `=>`,
    `;` comments (`\\;` is a literal semicolon), repeated sections and keys.
    """
    sections: list[tuple[str, dict[str, list[str]]]] = []
    for raw_line in text.splitlines():
        line = re.sub(r"(?<!\\);.*", "", raw_line).strip()
        if not line:
            continue
        header = re.fullmatch(r"\[([^\]]+)\](?:\(([^)]*)\))?", line)
        if header:
            sections.append((header[1], {}))
            continue
        key, sep, value = line.partition("=")
        assert sep and sections, f"unparsable line {raw_line!r}"
        value = value.removeprefix(">")
        sections[-1][1].setdefault(key.strip(), []).append(value.strip())
    return sections


def _typed(
    sections: list[tuple[str, dict[str, list[str]]]], kind: str
) -> list[tuple[str, dict[str, list[str]]]]:
    return [(name, options) for name, options in sections if options.get("type") == [kind]]


def test_asterisk_pjsip_gateway_endpoint() -> None:
    sections = parse_asterisk_conf((DEPLOY / "asterisk" / "pjsip.conf").read_text())
    endpoints = dict(_typed(sections, "endpoint"))
    gateway = endpoints["ws2sip"]
    expected = {
        "transport": "transport-udp", "direct_media": "no", "rtp_symmetric": "yes",
        "force_rport": "yes", "rewrite_contact": "yes", "allow": "!all,ulaw,alaw",
        "aors": "ws2sip",
    }
    for option, value in expected.items():
        assert gateway.get(option) == [value], option
    transports = dict(_typed(sections, "transport"))
    assert "transport-udp" in transports
    aor = dict(_typed(sections, "aor"))["ws2sip"]
    assert re.fullmatch(r"sip:[\w.\-]+:5060", aor["contact"][0])
    identify = [opts for _, opts in _typed(sections, "identify") if opts["endpoint"] == ["ws2sip"]]
    assert identify and identify[0]["match"]
    # The gateway's address in the AOR contact is the one the identify section trusts.
    assert aor["contact"][0].removeprefix("sip:").rpartition(":")[0] in identify[0]["match"][0]


def test_asterisk_pjsip_documents_the_registration_alternative() -> None:
    text = (DEPLOY / "asterisk" / "pjsip.conf").read_text()
    commented = "\n".join(
        line.lstrip("; ") for line in text.splitlines() if line.startswith(";")
    )
    assert "auth_type=userpass" in commented and "register = true" in commented


def test_asterisk_dialplan_uses_the_gateway_endpoint() -> None:
    sections = parse_asterisk_conf((DEPLOY / "asterisk" / "extensions.conf").read_text())
    contexts = {name: options for name, options in sections}
    to_gateway = contexts["to-ws2sip"]
    dials = " ".join(to_gateway["same"])
    assert "Dial(PJSIP/${EXTEN}@ws2sip" in dials
    patterns = [e.split(",")[0] for e in to_gateway["exten"]]
    assert "_7XXX" in patterns
    # Calls from web users land in the endpoint's context and can reach Asterisk extensions.
    pjsip = parse_asterisk_conf((DEPLOY / "asterisk" / "pjsip.conf").read_text())
    context = dict(_typed(pjsip, "endpoint"))["ws2sip"]["context"][0]
    assert "extensions" in contexts[context]["include"]
    assert any(e.startswith("_[2-6]XX,") for e in contexts["extensions"]["exten"])


# --- systemd ------------------------------------------------------------------------------

def test_systemd_unit() -> None:
    text = (DEPLOY / "systemd" / "ws2sip.service").read_text()
    options: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        options.setdefault(f"{section}.{key}", []).append(value)
    (exec_start,) = options["Service.ExecStart"]
    assert re.search(r"\bws2sip run --config \S+", exec_start)
    assert options["Service.NoNewPrivileges"] == ["yes"]
    assert options["Service.ProtectSystem"] == ["strict"]
    assert options["Service.StateDirectory"] == ["ws2sip"]
    assert "yes" in options.get("Service.DynamicUser", []) or options.get("Service.User")
    assert int(options["Service.LimitNOFILE"][0]) >= 65536
    assert options["Install.WantedBy"] == ["multi-user.target"]


# --- coturn -------------------------------------------------------------------------------

def test_coturn_config() -> None:
    options: dict[str, list[str]] = {}
    for line in (DEPLOY / "coturn" / "turnserver.conf").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            options.setdefault(key.strip(), []).append(value.strip())
    for flag in ("use-auth-secret", "no-multicast-peers", "fingerprint", "no-tcp-relay"):
        assert flag in options, flag
    assert options["static-auth-secret"][0] and options["realm"][0]
    assert options["listening-port"] == ["3478"]
    denied = options["denied-peer-ip"]
    for private in ("10.0.0.0-10.255.255.255", "172.16.0.0-172.31.255.255",
                    "192.168.0.0-192.168.255.255", "169.254.0.0-169.254.255.255"):
        assert private in denied
    relay = range(int(options["min-port"][0]), int(options["max-port"][0]) + 1)
    low, high = load_config(str(EXAMPLE), {}).rtp_port_range
    assert high < relay.start or low > relay.stop - 1, "relay range overlaps rtp_ports"


# --- README -------------------------------------------------------------------------------

def test_readme_covers_operations() -> None:
    text = (DEPLOY / "README.md").read_text()
    for needle in ("/healthz", "5060", "5061", "8080", "8443", "20000-40000", "auth_secret",
                   "node_id", "gateway/location/redis_store.py", "Let's Encrypt",
                   "systemctl", "kubectl", "compose", "coturn", "Asterisk"):
        assert needle in text, needle


def test_coturn_matches_the_gateway_turn_settings() -> None:
    options: dict[str, str] = {}
    for line in (DEPLOY / "coturn" / "turnserver.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.strip().partition("=")
            options.setdefault(key, value)
    config = load_config(str(EXAMPLE), {})
    assert config.turn_uris and config.turn_secret == options["static-auth-secret"]
    ports = {options["listening-port"], options["tls-listening-port"]}
    for uri in (*config.turn_uris, *config.stun_uris):
        port = re.search(r":(\d+)(?:\?|$)", uri)
        assert port and port[1] in ports, uri
        if uri.startswith("turns:"):
            assert port[1] == options["tls-listening-port"], uri
