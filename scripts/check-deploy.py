#!/usr/bin/env python3
"""Static checks of the docker-compose stack (no Docker engine needed).

Checks, against the sources they depend on:
  - docker-compose.yml: keys, services, ports, depends_on, healthchecks, volumes, the files
    it mounts, and tsad's environment (variable names from src/, the rule of src/config.rs
    that a non-loopback address needs valid API keys, a PostgreSQL URL to the postgres service);
    also `docker compose config -q` where the compose plugin is installed;
  - Dockerfile and .dockerignore: stages, libtorch install, release build, non-root user,
    EXPOSE 8080, HEALTHCHECK on /healthz, CMD `tsad serve`, files copied from the context;
  - deploy/prometheus/prometheus.yml: scrapes tsad:8080/metrics every 5 s;
  - Grafana provisioning and deploy/grafana/dashboards/*.json: datasource uid and URL, the
    dashboard folder mounted where the provider reads, and every PromQL expression's `tsad_*`
    metric names and label names against what src/metrics.rs registers.

Usage: python3 scripts/check-deploy.py   (exit status 0: all passed, 1: a check failed,
2: the checker itself could not run). Needs PyYAML; installs it with `pip --user` if missing.
"""
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPECTED_SERVICES = {"tsad", "postgres", "prometheus", "grafana"}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}


def die(message):
    """The checker itself cannot run (not a failed check): exit status 2."""
    print(f"check-deploy: {message}", file=sys.stderr)
    sys.exit(2)


def load_yaml_module():
    try:
        import yaml  # noqa: PLC0415
        return yaml
    except ImportError:
        pass
    print("check-deploy: PyYAML missing, installing it with pip --user", file=sys.stderr)
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "--user", "--quiet", "pyyaml"], check=True)
        import site  # noqa: PLC0415
        site.addsitedir(site.getusersitepackages())
        import yaml  # noqa: PLC0415
        return yaml
    except Exception as e:  # noqa: BLE001
        die(f"cannot import PyYAML ({e}); install python3-yaml or `pip install --user pyyaml`")


yaml = load_yaml_module()


class Checks:
    """Collects named results; a failure does not stop the other checks."""

    def __init__(self):
        self.passed = 0
        self.failures = []

    def check(self, ok, what, why=""):
        if ok:
            self.passed += 1
        else:
            self.failures.append(f"{what}: {why}" if why else what)
            print(f"FAIL {what}" + (f": {why}" if why else ""))
        return ok

    def fail(self, what, why=""):
        return self.check(False, what, why)


C = Checks()


def read(rel):
    return (ROOT / rel).read_text()


# ---------------------------------------------------------------- facts from the Rust sources

def registered_metrics():
    """{full_name: (kind, labels)} from src/metrics.rs; kind is 'histogram' or 'scalar'."""
    src = read("src/metrics.rs")
    prefix = re.search(r'Registry::new_custom\(\s*Some\(\s*"([^"]+)"', src)
    if not prefix:
        die("no Registry::new_custom(Some(\"prefix\")) in src/metrics.rs; update this script")
    prefix = prefix.group(1) + "_"
    decl = re.compile(
        r'\b(?P<fn>counter|histogram|gauge|HistogramOpts::new|Opts::new|(?:Int)?(?:Counter|Gauge)::new|Histogram::new)'
        r'\(\s*"(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)"'
    )
    matches = list(decl.finditer(src))
    metrics = {}
    for i, m in enumerate(matches):
        # The label list, if any, comes before the statement ends and before the next declaration.
        end = matches[i + 1].start() if i + 1 < len(matches) else len(src)
        semicolon = src.find(";", m.end())
        if semicolon != -1:
            end = min(end, semicolon)
        labels = re.search(r"&\[([^\]]*)\]", src[m.end():end])
        labels = set(re.findall(r'"([^"]+)"', labels.group(1))) if labels else set()
        kind = "histogram" if m.group("fn") in ("histogram", "HistogramOpts::new", "Histogram::new") else "scalar"
        name = prefix + m.group("name")
        if name in metrics:
            die(f"{name} declared twice in src/metrics.rs (or this parser misread it)")
        metrics[name] = (kind, labels)
    if len(metrics) < 5 or f"{prefix}readings_total" not in metrics:
        die(f"found only {sorted(metrics)} in src/metrics.rs; update this script's parser")
    return metrics


def known_env_names():
    """Environment variables the binary reads: clap `env = "…"` and explicit reads under src/."""
    names = set()
    for path in (ROOT / "src").rglob("*.rs"):
        text = path.read_text()
        names.update(re.findall(r'\benv\s*=\s*"([A-Z][A-Z0-9_]*)"', text))
        names.update(re.findall(r'(?:from_env|env::var|env::var_os)\(\s*"([A-Z][A-Z0-9_]*)"', text))
    if "TSAD_LISTEN" not in names or "DATABASE_URL" not in names:
        die(f"found only {sorted(names)} as env names in src/; update this script")
    return names


def api_keys_problem(text):
    """None if `text` parses as src/config.rs parse_api_keys does, else why not."""
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        if ":" not in entry:
            return f"entry {entry!r} is not scope:key"
        scope, key = entry.split(":", 1)
        if scope not in ("read", "write", "admin"):
            return f"scope {scope!r} is not read, write or admin"
        if len(key) < 16 or not all(33 <= ord(c) <= 126 for c in key):
            return f"the {scope} key is not at least 16 printable ASCII characters"
    return None


def config_rules_still_hold():
    src = read("src/config.rs")
    C.check("without API keys" in src and "is_loopback" in src and "key.len() < 16" in src,
            "src/config.rs still has the key rules this script mirrors",
            "the loopback/API-key rule changed; update api_keys_problem() and this check")


# ---------------------------------------------------------------- docker-compose.yml

def dotenv():
    env = {}
    path = ROOT / ".env"
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k.strip()] = v.strip().strip("'\"")
    return env


INTERP = re.compile(r"\$(?:(?P<esc>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value, env, where):
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err} and $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m):
        if m.group("esc"):
            return "$"
        if m.group("named"):
            return env.get(m.group("named"), "")
        expr = m.group("braced")
        op = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?$", expr, re.S)
        if not op:
            C.fail(f"{where}", f"bad interpolation ${{{expr}}}")
            return ""
        name, kind, arg = op.group(1), op.group(2), op.group(3) or ""
        val = env.get(name)
        unset_or_empty = val is None or (kind and kind.startswith(":") and val == "")
        if kind in (":-", "-"):
            return arg if unset_or_empty else val
        if kind in (":?", "?"):
            if unset_or_empty:
                C.fail(f"{where}", f"${{{name}}} is required: {arg}")
                return ""
            return val
        if kind in (":+", "+"):
            return "" if unset_or_empty else arg
        return val or ""

    return INTERP.sub(sub, value)


TOP_KEYS = {"name", "version", "services", "networks", "volumes", "configs", "secrets", "include"}
SERVICE_KEYS = {
    "build", "image", "command", "entrypoint", "environment", "env_file", "ports", "expose", "volumes",
    "depends_on", "healthcheck", "restart", "stop_grace_period", "stop_signal", "user", "working_dir",
    "networks", "deploy", "labels", "logging", "init", "ulimits", "shm_size", "tmpfs", "cap_add",
    "cap_drop", "security_opt", "read_only", "container_name", "hostname", "extra_hosts", "profiles",
    "platform", "pull_policy", "secrets", "configs", "mem_limit", "cpus", "devices", "gpus", "tty",
    "stdin_open", "develop",
}
HEALTH_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def parse_port(spec):
    """(host_ip, published, target) of a short-syntax port string."""
    spec = str(spec).split("/")[0]
    parts = spec.rsplit(":", 2)
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2:
        return "", parts[0], parts[1]
    return "", "", parts[0]


def env_dict(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {str(k): ("" if v is None else str(v)) for k, v in env.items()}


def check_compose(env_names, dockerfile_health):
    path = ROOT / "docker-compose.yml"
    if not C.check(path.is_file(), "docker-compose.yml exists"):
        return None
    raw = yaml.safe_load(path.read_text())
    env = {**dotenv(), **os.environ}
    doc = interpolate(raw, env, "compose")
    C.check(isinstance(doc, dict) and isinstance(doc.get("services"), dict), "compose has a services map")
    extra = {k for k in doc if k not in TOP_KEYS and not k.startswith("x-")}
    C.check(not extra, "compose top-level keys are known", f"unknown {sorted(extra)}")
    services = doc.get("services") or {}
    C.check(set(services) == EXPECTED_SERVICES, "compose services are tsad, postgres, prometheus, grafana",
            f"got {sorted(services)}")
    declared_volumes = set((doc.get("volumes") or {}).keys())
    published = {}

    for name, svc in services.items():
        where = f"services.{name}"
        unknown = set(svc) - SERVICE_KEYS
        C.check(not unknown, f"{where} keys are known", f"unknown {sorted(unknown)}")
        C.check("image" in svc or "build" in svc, f"{where} has image or build")
        for port in svc.get("ports") or []:
            host_ip, pub, target = parse_port(port)
            ok = target.isdigit() and (pub == "" or pub.isdigit())
            if host_ip:
                try:
                    ipaddress.ip_address(host_ip)
                except ValueError:
                    ok = False
            if C.check(ok, f"{where} port {port!r} parses"):
                if pub:
                    C.check(pub not in published, f"{where} publishes {pub} once",
                            f"also published by {published.get(pub)}")
                    published[pub] = name
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            C.check(dep in services, f"{where} depends_on {dep} exists")
            cond = (spec or {}).get("condition", "service_started")
            C.check(cond in CONDITIONS, f"{where} depends_on {dep} condition is valid", repr(cond))
            if cond == "service_healthy" and dep in services:
                has = "healthcheck" in services[dep] or (dep == "tsad" and dockerfile_health)
                C.check(has, f"{where} waits for {dep} healthy and {dep} has a healthcheck")
        hc = svc.get("healthcheck")
        if hc is not None:
            C.check(set(hc) <= HEALTH_KEYS, f"{where}.healthcheck keys are known", f"{sorted(set(hc) - HEALTH_KEYS)}")
            test = hc.get("test")
            ok = isinstance(test, str) or (isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL", "NONE"))
            C.check(ok, f"{where}.healthcheck.test is a string or [CMD|CMD-SHELL, …]")
        for vol in svc.get("volumes") or []:
            if isinstance(vol, dict):
                source, target = vol.get("source", ""), vol.get("target", "")
            else:
                source, _, rest = str(vol).partition(":")
                target = rest.split(":")[0]
            C.check(target.startswith("/"), f"{where} volume {vol!r} targets an absolute path")
            if source.startswith((".", "/")):
                C.check((ROOT / source).resolve().exists(), f"{where} mounts {source}, which exists")
            else:
                C.check(source in declared_volumes, f"{where} named volume {source} is declared at top level")
        for key in env_dict(svc):
            C.check(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) is not None, f"{where} env name {key!r} is valid")
        build = svc.get("build")
        if build is not None:
            ctx = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            C.check((ROOT / ctx / dockerfile).is_file(), f"{where} build {ctx}/{dockerfile} exists")

    # Dependency cycles.
    def visit(n, stack):
        if n in stack:
            return C.fail("compose depends_on has no cycle", " -> ".join(stack + [n]))
        deps = services.get(n, {}).get("depends_on") or {}
        for d in deps:
            visit(d, stack + [n])

    for n in services:
        visit(n, [])

    tsad = services.get("tsad", {})
    tenv = env_dict(tsad)
    unknown = set(tenv) - env_names
    C.check(not unknown, "tsad's environment names are ones the binary reads", f"unknown {sorted(unknown)}")
    listen = tenv.get("TSAD_LISTEN", "127.0.0.1:8080")
    host, _, port = listen.rpartition(":")
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
        C.check(port == "8080", "tsad listens on port 8080", listen)
    except ValueError:
        loopback = True
        C.fail("TSAD_LISTEN is host:port", repr(listen))
    C.check(not loopback, "tsad listens on a non-loopback address (reachable from the other containers)", listen)
    if not loopback:
        keys = tenv.get("TSAD_API_KEYS", "")
        problem = api_keys_problem(keys) if keys.strip() else "TSAD_API_KEYS is empty"
        C.check(problem is None, "TSAD_API_KEYS is valid, as a non-loopback TSAD_LISTEN requires", problem or "")
    url = tenv.get("DATABASE_URL", "")
    m = re.match(r"postgres(?:ql)?://(?:[^@/]*@)?([^:/?]+)(?::(\d+))?/", url)
    C.check(bool(m) and m.group(1) == "postgres" and (m.group(2) or "5432") == "5432",
            "tsad's DATABASE_URL is postgres://…@postgres:5432/…", re.sub(r":[^:@/]*@", ":***@", url))
    deps = tsad.get("depends_on") or {}
    C.check(isinstance(deps, dict) and (deps.get("postgres") or {}).get("condition") == "service_healthy",
            "tsad depends_on postgres: service_healthy")
    C.check(any(parse_port(p)[2] == "8080" for p in tsad.get("ports") or []), "tsad publishes 8080")
    pg = services.get("postgres", {})
    C.check(str(pg.get("image", "")).startswith("postgres:16"), "postgres image is postgres:16", pg.get("image", ""))
    C.check("healthcheck" in pg, "postgres has a healthcheck")
    C.check(any(not str(v).startswith((".", "/")) and str(v).split(":")[1:2] == ["/var/lib/postgresql/data"]
                for v in pg.get("volumes") or []), "postgres keeps its data on a named volume")
    if m:
        penv = env_dict(pg)
        user_pass = re.match(r"postgres(?:ql)?://([^:@]*)(?::([^@]*))?@[^/]*/([^?]*)", url)
        if user_pass:
            user, password, db = user_pass.groups()
            C.check(user == penv.get("POSTGRES_USER", "postgres") and password == penv.get("POSTGRES_PASSWORD")
                    and db == penv.get("POSTGRES_DB", user), "tsad's DATABASE_URL matches postgres's user, password, db")
    C.check(any(parse_port(p)[2] == "9090" for p in services.get("prometheus", {}).get("ports") or []),
            "prometheus publishes 9090")
    C.check(any(parse_port(p)[2] == "3000" for p in services.get("grafana", {}).get("ports") or []),
            "grafana publishes 3000")
    return doc


def docker_compose_config():
    if shutil.which("docker") is None:
        print("skip docker compose config: no docker CLI")
        return
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        print("skip docker compose config: the compose plugin is not installed (checked with PyYAML instead)")
        return
    run = subprocess.run(["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                         cwd=ROOT, capture_output=True, text=True)
    C.check(run.returncode == 0, "docker compose config -q", (run.stderr or run.stdout).strip())


# ---------------------------------------------------------------- Dockerfile

def dockerfile_instructions():
    lines, buf = [], ""
    for line in read("Dockerfile").splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        lines.append((word.upper(), rest.strip()))
        buf = ""
    return lines


def check_dockerfile(env_names):
    if not C.check((ROOT / "Dockerfile").is_file(), "Dockerfile exists"):
        return False
    args, stages = {}, []
    for word, rest in dockerfile_instructions():
        if word == "ARG" and not stages:
            k, _, v = rest.partition("=")
            args[k] = v
        elif word == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), rest.split()[0])
            alias = rest.split()[2] if len(rest.split()) >= 3 and rest.split()[1].upper() == "AS" else None
            stages.append({"image": image, "alias": alias, "ins": []})
        elif stages:
            stages[-1]["ins"].append((word, rest))
    if not C.check(len(stages) >= 2, "Dockerfile is multi-stage"):
        return False
    builder, runtime = stages[0], stages[-1]
    C.check(re.fullmatch(r"rust:[\w.]*-?bookworm", builder["image"]) is not None,
            "builder is an official Rust image on Debian bookworm", builder["image"])
    runs = " ".join(r for w, r in builder["ins"] if w == "RUN")
    C.check("python3-venv" in runs, "builder installs python3-venv")
    C.check("scripts/libtorch.sh" in runs, "builder runs scripts/libtorch.sh")
    C.check(re.search(r"cargo build --release\b", runs) is not None, "builder runs cargo build --release")
    C.check(runtime["image"] == "debian:bookworm-slim", "runtime is debian:bookworm-slim", runtime["image"])
    aliases = {s["alias"] for s in stages if s["alias"]}
    for stage in stages:
        for word, rest in stage["ins"]:
            if word not in ("COPY", "ADD"):
                continue
            parts = [p for p in rest.split() if not p.startswith("--")]
            frm = re.search(r"--from=(\S+)", rest)
            if frm:
                C.check(frm.group(1) in aliases, f"COPY --from={frm.group(1)} names a stage")
            else:
                for src in parts[:-1]:
                    C.check(src == "." or (ROOT / src).exists(), f"COPY {src} exists in the build context")
    ins = runtime["ins"]
    users = [r for w, r in ins if w == "USER"]
    C.check(bool(users) and users[-1].split(":")[0] not in ("root", "0"), "runtime runs as a non-root user")
    C.check(any(w == "EXPOSE" and "8080" in r.split() for w, r in ins), "runtime EXPOSEs 8080")
    health = [r for w, r in ins if w == "HEALTHCHECK"]
    C.check(bool(health) and "/healthz" in health[-1], "runtime HEALTHCHECK calls /healthz")
    cmd = [r for w, r in ins if w == "CMD"]
    try:
        cmd = json.loads(cmd[-1]) if cmd else []
    except json.JSONDecodeError:
        cmd = []
    C.check(cmd[:2] == ["tsad", "serve"], 'runtime CMD is ["tsad", "serve", …] (exec form)')
    envs = {}
    for word, rest in ins:
        if word == "ENV":
            envs.update(re.findall(r'(\w+)=("[^"]*"|\S+)', rest))
    unknown = set(envs) - env_names
    C.check(not unknown, "runtime ENV names are ones the binary reads", f"unknown {sorted(unknown)}")
    listen = " ".join(cmd) + " " + envs.get("TSAD_LISTEN", "")
    C.check("0.0.0.0:8080" in listen, "runtime binds 0.0.0.0:8080")
    C.check("TSAD_MODELS_DIR" in envs and any("models/default" in r for w, r in ins if w == "COPY"),
            "runtime ships models/default and points TSAD_MODELS_DIR at it")
    ignore = (ROOT / ".dockerignore").read_text().split() if (ROOT / ".dockerignore").is_file() else []
    for pattern in ("target/", ".tsad/", "*.db"):
        C.check(pattern in ignore or pattern.rstrip("/") in ignore, f".dockerignore has {pattern}")
    return bool(health)


# ---------------------------------------------------------------- Prometheus

def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", str(text))
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)] if m else None


def check_prometheus(compose):
    rel = "deploy/prometheus/prometheus.yml"
    if not C.check((ROOT / rel).is_file(), f"{rel} exists"):
        return
    doc = yaml.safe_load(read(rel)) or {}
    glob = doc.get("global") or {}
    jobs = [j for j in doc.get("scrape_configs") or []
            if any("tsad:8080" in (sc.get("targets") or []) for sc in j.get("static_configs") or [])]
    if not C.check(bool(jobs), f"{rel} scrapes tsad:8080"):
        return
    job = jobs[0]
    C.check(job.get("metrics_path", "/metrics") == "/metrics", f"{rel} scrapes /metrics")
    C.check(seconds(job.get("scrape_interval", glob.get("scrape_interval", "1m"))) == 5, f"{rel} scrapes every 5s")
    C.check(job.get("scheme", "http") == "http" and "authorization" not in job and "basic_auth" not in job,
            f"{rel} scrapes plain http without credentials (/metrics is open)")
    health = read("src/api/health.rs")
    C.check('"/metrics"' in health, "src/api/health.rs serves /metrics")
    mounts = [str(v) for v in ((compose or {}).get("services", {}).get("prometheus", {}).get("volumes") or [])]
    C.check(any(v.startswith(f"./{rel}:/etc/prometheus/prometheus.yml") for v in mounts),
            f"compose mounts {rel} at /etc/prometheus/prometheus.yml")


# ---------------------------------------------------------------- Grafana and the dashboard

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or",
                "unless"}


def check_expr(expr, metrics, where):
    """Metric and label names in one PromQL expression; returns the metrics it uses."""
    no_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    used = set()
    for name in re.findall(r"(?<![A-Za-z0-9_:$])tsad_[A-Za-z0-9_:]*", no_strings):
        base, suffix = name, ""
        if name not in metrics:
            m = re.fullmatch(r"(.*)_(bucket|sum|count)", name)
            if m and metrics.get(m.group(1), ("",))[0] == "histogram":
                base, suffix = m.group(1), m.group(2)
        if base not in metrics:
            C.fail(f"{where}: metric {name}", "not registered in src/metrics.rs")
            continue
        if metrics[base][0] == "histogram" and not suffix:
            C.fail(f"{where}: metric {name}", "is a histogram: use _bucket, _sum or _count")
            continue
        C.check(True, f"{where}: {name}")
        used.add(base)
        allowed = metrics[base][1] | TARGET_LABELS | ({"le"} if suffix == "bucket" else set())
        for selector in re.finditer(re.escape(name) + r"\s*\{([^}]*)\}", expr):
            for label in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", selector.group(1)):
                C.check(label in allowed, f"{where}: label {label} of {name}", f"labels are {sorted(allowed)}")
    allowed = set(TARGET_LABELS)
    for base in used:
        allowed |= metrics[base][1]
    if "_bucket" in no_strings:
        allowed.add("le")
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", no_strings):
        for label in (l.strip() for l in group.split(",") if l.strip()):
            C.check(label in allowed, f"{where}: grouping label {label}", f"the metrics here have {sorted(allowed)}")
    if "histogram_quantile" in no_strings:
        C.check("_bucket" in no_strings and re.search(r"\bby\s*\([^)]*\ble\b", no_strings) is not None,
                f"{where}: histogram_quantile over _bucket grouped by le")
    return used


def walk_panels(panels):
    for panel in panels or []:
        yield panel
        yield from walk_panels(panel.get("panels"))


def check_grafana(compose, metrics):
    ds_rel = "deploy/grafana/provisioning/datasources/prometheus.yml"
    prov_rel = "deploy/grafana/provisioning/dashboards/tsad.yml"
    for rel in (ds_rel, prov_rel):
        C.check((ROOT / rel).is_file(), f"{rel} exists")
    uids = set()
    if (ROOT / ds_rel).is_file():
        for ds in (yaml.safe_load(read(ds_rel)) or {}).get("datasources") or []:
            if ds.get("type") == "prometheus":
                uids.add(ds.get("uid"))
                C.check(ds.get("url") == "http://prometheus:9090", f"{ds_rel}: datasource URL is http://prometheus:9090",
                        str(ds.get("url")))
        C.check(bool(uids) and None not in uids, f"{ds_rel}: a Prometheus datasource with a uid")
    grafana = (compose or {}).get("services", {}).get("grafana", {})
    mounts = {}
    for v in grafana.get("volumes") or []:
        src, _, rest = str(v).partition(":")
        mounts[rest.split(":")[0]] = src
    C.check(mounts.get("/etc/grafana/provisioning") == "./deploy/grafana/provisioning",
            "compose mounts deploy/grafana/provisioning at /etc/grafana/provisioning")
    dash_dir = None
    if (ROOT / prov_rel).is_file():
        providers = (yaml.safe_load(read(prov_rel)) or {}).get("providers") or []
        paths = [(p.get("options") or {}).get("path") for p in providers if p.get("type", "file") == "file"]
        C.check(bool(paths), f"{prov_rel}: a file provider")
        for path in paths:
            src = mounts.get(path)
            if C.check(src is not None, f"{prov_rel}: provider path {path} is mounted in grafana"):
                dash_dir = ROOT / src
    home = env_dict(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        host_dir, _, name = home.rpartition("/")
        C.check(host_dir in mounts and (ROOT / mounts[host_dir] / name).is_file(),
                "grafana's home dashboard path is a mounted file", home)
    dashboards = sorted((dash_dir or ROOT / "deploy/grafana/dashboards").glob("*.json"))
    C.check(any(d.name == "tsad.json" for d in dashboards), "deploy/grafana/dashboards/tsad.json exists")
    used = set()
    for path in dashboards:
        rel = path.relative_to(ROOT)
        try:
            dash = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            C.fail(f"{rel} is JSON", str(e))
            continue
        C.check(bool(dash.get("uid")) and bool(dash.get("title")), f"{rel} has a uid and a title")
        ids = [p.get("id") for p in walk_panels(dash.get("panels"))]
        C.check(len(ids) == len(set(ids)), f"{rel}: panel ids are unique")
        exprs = 0
        for panel in walk_panels(dash.get("panels")):
            where = f"{rel} panel {panel.get('title')!r}"
            for ds in [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets") or []]:
                if isinstance(ds, dict) and ds.get("type") == "prometheus":
                    C.check(ds.get("uid") in uids, f"{where}: datasource uid {ds.get('uid')!r} is provisioned")
            for target in panel.get("targets") or []:
                if "expr" in target:
                    exprs += 1
                    used |= check_expr(target["expr"], metrics, where)
            if panel.get("type") != "row":
                C.check(bool(panel.get("targets")), f"{where} has queries")
        C.check(exprs > 0, f"{rel} has PromQL expressions")
    unused = sorted(set(metrics) - used)
    print(f"dashboard uses {len(used)} of {len(metrics)} registered metrics"
          + (f"; not shown: {', '.join(unused)}" if unused else ""))


def main():
    os.chdir(ROOT)
    metrics = registered_metrics()
    env_names = known_env_names()
    config_rules_still_hold()
    health = check_dockerfile(env_names)
    compose = check_compose(env_names, health)
    docker_compose_config()
    check_prometheus(compose)
    check_grafana(compose, metrics)
    total = C.passed + len(C.failures)
    if C.failures:
        print(f"check-deploy: FAILED, {len(C.failures)} of {total} checks")
        return 1
    print(f"check-deploy: ok, {total} checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
