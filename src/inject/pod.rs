//! One Kubernetes object: finding its pod template, reading the `remora.io/*` annotations there, and
//! adding (or refreshing) the init container, the sidecar, the volume and the `injected` mark.

use yaml_serde::{Mapping, Value};

use super::containers::{self, string, Placement, Skips};
use super::Options;

pub const INJECT: &str = "remora.io/inject";
pub const SKIP_INBOUND: &str = "remora.io/skip-inbound-ports";
pub const SKIP_OUTBOUND: &str = "remora.io/skip-outbound-ports";
pub const INJECTED: &str = "remora.io/injected";

/// What became of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    /// Not a kind with a pod template; passed through.
    NotAWorkload,
    /// `remora.io/inject: disabled` on its pod template; passed through.
    Disabled,
    /// `hostNetwork: true`: the init container's rules would rewrite the node's own network.
    HostNetwork,
}

/// Why an object cannot be injected; [`super::Error`] adds the document and the object's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Annotation {
        annotation: &'static str,
        value: String,
        reason: String,
    },
    /// The object's shape is not what its kind has (`spec.template.spec.containers` not a list, …).
    Shape {
        path: String,
        reason: &'static str,
    },
}

/// The `kind` and `metadata.name` of an object, when it has them.
pub fn identity(object: &Value) -> (Option<String>, Option<String>) {
    let text = |value: Option<&Value>| value.and_then(Value::as_str).map(str::to_owned);
    let metadata = object.get("metadata");
    let name = text(metadata.and_then(|metadata| metadata.get("name")))
        .or_else(|| text(metadata.and_then(|metadata| metadata.get("generateName"))));
    (text(object.get("kind")), name)
}

/// Where a kind keeps its pod template (a mapping with `metadata` and `spec`), and how the sidecar
/// goes in; `None` for kinds without pods.
fn template_path(kind: &str) -> Option<(&'static [&'static str], Placement)> {
    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController" => {
            Some((&["spec", "template"], Placement::Container))
        }
        "Job" => Some((&["spec", "template"], Placement::NativeSidecar)),
        "CronJob" => Some((&["spec", "jobTemplate", "spec", "template"], Placement::NativeSidecar)),
        "Pod" => Some((&[], Placement::Container)),
        _ => None,
    }
}

/// Injects `object` in place, or says why it was left alone. On an error `object` may be half
/// changed: the caller drops it.
pub fn inject(object: &mut Value, options: &Options) -> Result<Outcome, Problem> {
    let Some((path, placement)) = object.get("kind").and_then(Value::as_str).and_then(template_path) else {
        return Ok(Outcome::NotAWorkload);
    };
    let template = mapping_at(object, path)?;
    let prefix =
        |key: &str| if path.is_empty() { key.to_owned() } else { format!("{}.{key}", path.join(".")) };

    let annotations = template.get("metadata").and_then(|metadata| metadata.get("annotations"));
    let annotation = |name: &'static str| annotation(annotations, name);
    match annotation(INJECT)?.as_deref() {
        Some("disabled") => return Ok(Outcome::Disabled),
        Some("enabled") | None => {}
        Some(other) => {
            return Err(Problem::Annotation {
                annotation: INJECT,
                value: other.to_owned(),
                reason: "must be \"enabled\" or \"disabled\"".to_owned(),
            })
        }
    }
    let ports = |name: &'static str| -> Result<Vec<u16>, Problem> {
        match annotation(name)? {
            None => Ok(Vec::new()),
            Some(value) => parse_ports(&value).map_err(|reason| Problem::Annotation {
                annotation: name,
                value: value.clone(),
                reason,
            }),
        }
    };
    let skips = Skips { inbound: ports(SKIP_INBOUND)?, outbound: ports(SKIP_OUTBOUND)? };

    let spec = match template.get_mut("spec") {
        Some(Value::Mapping(spec)) => spec,
        _ => return Err(Problem::Shape { path: prefix("spec"), reason: "is missing or not a mapping" }),
    };
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::HostNetwork);
    }
    if !matches!(spec.get("containers"), Some(Value::Sequence(_))) {
        return Err(Problem::Shape { path: prefix("spec.containers"), reason: "is missing or not a list" });
    }
    for key in ["initContainers", "volumes"] {
        if !matches!(spec.get(key), None | Some(Value::Null | Value::Sequence(_))) {
            return Err(Problem::Shape { path: prefix(&format!("spec.{key}")), reason: "is not a list" });
        }
    }
    add_containers(spec, options, &skips, placement);
    update(spec, "volumes", |volumes| upsert(volumes, containers::VOLUME, containers::volume(options), None));
    mark(template, options);
    Ok(Outcome::Injected)
}

/// An annotation's value; a number or bool (which Kubernetes would refuse) is read as its text.
fn annotation(annotations: Option<&Value>, name: &'static str) -> Result<Option<String>, Problem> {
    match annotations.and_then(|annotations| annotations.get(name)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(Value::Number(number)) => Ok(Some(number.to_string())),
        Some(Value::Bool(flag)) => Ok(Some(flag.to_string())),
        Some(_) => Err(Problem::Annotation {
            annotation: name,
            value: String::new(),
            reason: "must be a string".to_owned(),
        }),
    }
}

/// A comma-separated list of ports (1-65535), spaces around each allowed: `"22, 5432"`.
pub fn parse_ports(text: &str) -> Result<Vec<u16>, String> {
    if text.trim().is_empty() {
        return Err("no ports: give ports separated by commas, e.g. \"22,5432\"".to_owned());
    }
    text.split(',')
        .map(|item| {
            let item = item.trim();
            match item.parse::<u16>() {
                Ok(port) if port > 0 => Ok(port),
                _ => Err(format!(
                    "{item:?} is not a port (1-65535); give ports separated by commas, e.g. \"22,5432\""
                )),
            }
        })
        .collect()
}

/// The mapping at `path` under `object` (`object` itself for an empty path).
fn mapping_at<'a>(object: &'a mut Value, path: &[&str]) -> Result<&'a mut Mapping, Problem> {
    let mut current = object;
    for (depth, key) in path.iter().enumerate() {
        current = match current.get_mut(*key) {
            Some(inner) if inner.is_mapping() => inner,
            _ => {
                return Err(Problem::Shape {
                    path: path[..=depth].join("."),
                    reason: "is missing or not a mapping",
                })
            }
        };
    }
    match current {
        Value::Mapping(mapping) => Ok(mapping),
        _ => Err(Problem::Shape { path: "(document)".to_owned(), reason: "is not a mapping" }),
    }
}

/// Changes the list `spec[key]`, made empty first when missing or null.
fn update(spec: &mut Mapping, key: &str, change: impl FnOnce(&mut Vec<Value>)) {
    let slot = spec.entry(string(key)).or_insert(Value::Null);
    let mut items = match std::mem::take(slot) {
        Value::Sequence(items) => items,
        _ => Vec::new(),
    };
    change(&mut items);
    *slot = Value::Sequence(items);
}

fn position(items: &[Value], name: &str) -> Option<usize> {
    items.iter().position(|item| item.get("name").and_then(Value::as_str) == Some(name))
}

/// Replaces the item named `name` where it is, or inserts `item` at `at` (the end when `None`).
fn upsert(items: &mut Vec<Value>, name: &str, item: Value, at: Option<usize>) {
    match position(items, name) {
        Some(index) => items[index] = item,
        None => items.insert(at.unwrap_or(items.len()).min(items.len()), item),
    }
}

fn add_containers(spec: &mut Mapping, options: &Options, skips: &Skips, placement: Placement) {
    let init = containers::init(options, skips);
    let proxy = containers::proxy(options, placement);
    let remove_proxy = |items: &mut Vec<Value>| {
        if let Some(index) = position(items, containers::PROXY) {
            items.remove(index);
        }
    };
    match placement {
        Placement::Container => {
            // Last of the init containers: the ones before it still reach the network directly, as
            // no proxy runs yet to take their redirected connections.
            update(spec, "initContainers", |items| {
                remove_proxy(items);
                upsert(items, containers::INIT, init, None);
            });
            update(spec, "containers", |items| upsert(items, containers::PROXY, proxy, None));
        }
        Placement::NativeSidecar => {
            update(spec, "containers", remove_proxy);
            // First, then the proxy: the init containers after them already go through it.
            update(spec, "initContainers", |items| {
                upsert(items, containers::INIT, init, Some(0));
                let after_init = position(items, containers::INIT).map_or(0, |index| index + 1);
                upsert(items, containers::PROXY, proxy, Some(after_init));
            });
        }
    }
}

/// `metadata.annotations["remora.io/injected"] = VERSION` on the template, `metadata` first when the
/// template had none.
fn mark(template: &mut Mapping, options: &Options) {
    if !matches!(template.get("metadata"), Some(Value::Mapping(_))) {
        let mut marked = Mapping::with_capacity(template.len() + 1);
        marked.insert(string("metadata"), Value::Mapping(Mapping::new()));
        for (key, value) in std::mem::take(template) {
            if key.as_str() != Some("metadata") {
                marked.insert(key, value);
            }
        }
        *template = marked;
    }
    if let Some(Value::Mapping(metadata)) = template.get_mut("metadata") {
        let annotations = metadata.entry(string("annotations")).or_insert(Value::Null);
        if !annotations.is_mapping() {
            *annotations = Value::Mapping(Mapping::new());
        }
        if let Value::Mapping(annotations) = annotations {
            annotations.insert(string(INJECTED), string(&options.version));
        }
    }
}
