//! What `remora inject` adds to a pod: the `remora-init` init container (iptables redirection, run
//! once as root), the `remora-proxy` sidecar and the `remora-config` volume holding its config.
//!
//! Keys are written in the order `kubectl` users are used to reading them (name, image, args, ports,
//! env, mounts, resources, probes, security), and every value is built from [`Options`], so that the
//! same options always give the same bytes (what makes injection idempotent).

use yaml_serde::{Mapping, Value};

use super::Options;

/// The init container's name; an existing one is replaced in place.
pub const INIT: &str = "remora-init";
/// The sidecar's name; an existing one is replaced in place.
pub const PROXY: &str = "remora-proxy";
/// The volume holding the proxy's config, from the ConfigMap named by `--config-map`.
pub const VOLUME: &str = "remora-config";
/// Where the volume is mounted in the sidecar; the proxy reads `remora.toml` there.
pub const CONFIG_DIR: &str = "/etc/remora";
/// The Secret (in the pod's namespace) whose `token` key the proxy sends to control, if it exists.
pub const TOKEN_SECRET: &str = "remora-control-token";
/// The admin port's name, which the probes and Prometheus's pod discovery use.
pub const ADMIN_PORT_NAME: &str = "remora-admin";

/// A mapping from `(key, value)` pairs, in order.
pub fn map<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    let mut mapping = Mapping::with_capacity(N);
    for (key, value) in pairs {
        mapping.insert(string(key), value);
    }
    Value::Mapping(mapping)
}

pub fn string(text: impl Into<String>) -> Value {
    Value::String(text.into())
}

fn strings<const N: usize>(texts: [&str; N]) -> Value {
    Value::Sequence(texts.into_iter().map(string).collect())
}

fn number(value: u32) -> Value {
    Value::Number(value.into())
}

/// Skipped ports, as given in the pod's annotations (already validated).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Skips {
    pub inbound: Vec<u16>,
    pub outbound: Vec<u16>,
}

fn port_list(ports: &[u16]) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

/// `remora init` as root with the two capabilities iptables needs. The admin port is always skipped
/// inbound: the kubelet's probes reach it on the pod's address and must not be redirected to the
/// inbound listener.
pub fn init(options: &Options, skips: &Skips) -> Value {
    let mut inbound = vec![options.admin_port];
    inbound.extend(skips.inbound.iter().filter(|&&port| port != options.admin_port));
    let mut args = vec![
        string("init"),
        string("--proxy-uid"),
        string(options.proxy_uid.to_string()),
        string("--inbound-port"),
        string(options.inbound_port.to_string()),
        string("--outbound-port"),
        string(options.outbound_port.to_string()),
        string("--skip-inbound-ports"),
        string(port_list(&inbound)),
    ];
    if !skips.outbound.is_empty() {
        args.push(string("--skip-outbound-ports"));
        args.push(string(port_list(&skips.outbound)));
    }
    map([
        ("name", string(INIT)),
        ("image", string(&options.image)),
        ("args", Value::Sequence(args)),
        (
            "securityContext",
            map([
                ("allowPrivilegeEscalation", Value::Bool(false)),
                ("privileged", Value::Bool(false)),
                (
                    "capabilities",
                    map([("add", strings(["NET_ADMIN", "NET_RAW"])), ("drop", strings(["ALL"]))]),
                ),
                ("runAsNonRoot", Value::Bool(false)),
                ("runAsUser", number(0)),
            ]),
        ),
    ])
}

/// How the sidecar sits in the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Last of `containers`, so the application stays the pod's default container for `kubectl logs`
    /// and `exec`.
    Container,
    /// A Kubernetes native sidecar (an init container with `restartPolicy: Always`, Kubernetes 1.29+)
    /// right after `remora-init`: for Jobs, whose pods must end when the job's containers do, which a
    /// proxy in `containers` would never let happen.
    NativeSidecar,
}

/// The proxy: unprivileged, as the UID the init rules leave alone (so its own connections are never
/// redirected back into it), with a read-only root and its config from the ConfigMap volume.
pub fn proxy(options: &Options, placement: Placement) -> Value {
    let port = |name: &str, port: u16| {
        map([("name", string(name)), ("containerPort", number(port.into())), ("protocol", string("TCP"))])
    };
    let probe =
        |path: &str| map([("httpGet", map([("path", string(path)), ("port", string(ADMIN_PORT_NAME))]))]);
    let mut container = map([
        ("name", string(PROXY)),
        ("image", string(&options.image)),
        ("args", strings(["proxy", "--config", "/etc/remora/remora.toml"])),
        (
            "ports",
            Value::Sequence(vec![
                port("remora-inbound", options.inbound_port),
                port("remora-outbound", options.outbound_port),
                port(ADMIN_PORT_NAME, options.admin_port),
            ]),
        ),
        (
            "env",
            Value::Sequence(vec![
                // The probes come from the kubelet, off the pod: the admin server must listen on
                // every address, on the port given here, whatever the ConfigMap's `[admin] listen`.
                map([
                    ("name", string("REMORA_ADMIN__LISTEN")),
                    ("value", string(format!("0.0.0.0:{}", options.admin_port))),
                ]),
                // Control's API token, from the namespace's Secret when there is one (a proxy
                // without `[control]` needs none).
                map([
                    ("name", string("REMORA_CONTROL_TOKEN")),
                    (
                        "valueFrom",
                        map([(
                            "secretKeyRef",
                            map([
                                ("name", string(TOKEN_SECRET)),
                                ("key", string("token")),
                                ("optional", Value::Bool(true)),
                            ]),
                        )]),
                    ),
                ]),
            ]),
        ),
        (
            "volumeMounts",
            Value::Sequence(vec![map([
                ("name", string(VOLUME)),
                ("mountPath", string(CONFIG_DIR)),
                ("readOnly", Value::Bool(true)),
            ])]),
        ),
        (
            "resources",
            map([
                ("requests", map([("cpu", string("50m")), ("memory", string("32Mi"))])),
                ("limits", map([("memory", string("128Mi"))])),
            ]),
        ),
        ("readinessProbe", probe("/ready")),
        ("livenessProbe", probe("/live")),
        (
            "securityContext",
            map([
                ("allowPrivilegeEscalation", Value::Bool(false)),
                ("capabilities", map([("drop", strings(["ALL"]))])),
                ("readOnlyRootFilesystem", Value::Bool(true)),
                ("runAsNonRoot", Value::Bool(true)),
                ("runAsUser", number(options.proxy_uid)),
            ]),
        ),
    ]);
    if placement == Placement::NativeSidecar {
        if let Value::Mapping(mapping) = &mut container {
            mapping.insert(string("restartPolicy"), string("Always"));
        }
    }
    container
}

pub fn volume(options: &Options) -> Value {
    map([("name", string(VOLUME)), ("configMap", map([("name", string(&options.config_map))]))])
}
