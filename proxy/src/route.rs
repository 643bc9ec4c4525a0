//! Step 3 of a request's way: the route table. Routes are tried in the order the file lists them and
//! the first whose host, path, method and headers all match wins.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use remora_config as config;

use crate::retry::{Budget, RetryPolicy};
use crate::split::Split;

/// The routes of one listener, compiled from the configuration.
#[derive(Debug)]
pub struct RouteTable {
    routes: Box<[Route]>,
}

#[derive(Debug)]
pub struct Route {
    matcher: Matcher,
    pub timeout: Option<std::time::Duration>,
    pub split: Split,
    /// The route's retry policy and budget; `None` when the route does not retry.
    pub retry: Option<Arc<RouteRetry>>,
}

/// What a route that retries needs on every request: shared by the route's requests on every
/// listener, so the budget counts all of them, and carried across reloads (see [`RouteRetry::carrying`]).
#[derive(Debug)]
pub struct RouteRetry {
    pub policy: RetryPolicy,
    pub budget: Budget,
    /// The settings it was compiled from.
    settings: config::Retry,
}

impl RouteRetry {
    /// The retry state of a route with `settings`, keeping `previous` (the running route's of the same
    /// name): itself when the settings are unchanged, else its budget's counts under the new settings.
    /// A reload — and control pushes one with every rollout step — must not hand a struggling
    /// upstream a fresh budget.
    pub fn carrying(settings: &config::Retry, previous: Option<&Arc<RouteRetry>>) -> Arc<RouteRetry> {
        match previous {
            Some(running) if running.settings == *settings => running.clone(),
            previous => Arc::new(RouteRetry {
                policy: RetryPolicy::new(settings),
                budget: match previous {
                    Some(running) => {
                        running.budget.carrying(settings.budget_ratio, settings.min_retries_per_second)
                    }
                    None => Budget::new(
                        settings.budget_ratio,
                        settings.min_retries_per_second,
                        tokio::time::Instant::now(),
                    ),
                },
                settings: settings.clone(),
            }),
        }
    }
}

#[derive(Debug)]
struct Matcher {
    host: Option<config::HostMatch>,
    path: config::PathMatch,
    methods: Box<[Method]>,
    headers: Box<[(HeaderName, HeaderValue)]>,
}

/// What of a request the route table looks at.
pub struct RequestKey<'a> {
    /// The host without port, as the client wrote it (any case).
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        Self { routes: routes.into_boxed_slice() }
    }

    pub fn find(&self, key: &RequestKey<'_>) -> Option<&Route> {
        self.routes.iter().find(|route| route.matcher.matches(key))
    }
}

impl Route {
    /// Compiles one configured route; `split` and `retry` are built by the caller, which owns the
    /// clusters and the retry state of every route.
    pub fn new(route: &config::Route, split: Split, retry: Option<Arc<RouteRetry>>) -> Self {
        let matcher = &route.matcher;
        Self {
            matcher: Matcher {
                host: matcher.host.clone(),
                path: matcher.path.clone(),
                // Validation let only token characters through, so these parse.
                methods: matcher.methods.iter().filter_map(|method| method.parse().ok()).collect(),
                headers: matcher
                    .headers
                    .iter()
                    .filter_map(|(name, value)| {
                        Some((
                            HeaderName::from_bytes(name.as_bytes()).ok()?,
                            HeaderValue::from_str(value).ok()?,
                        ))
                    })
                    .collect(),
            },
            timeout: route.timeout.map(config::Duration::get),
            split,
            retry,
        }
    }
}

impl Matcher {
    fn matches(&self, key: &RequestKey<'_>) -> bool {
        self.matches_host(key.host)
            && path_matches(&self.path, key.path)
            && (self.methods.is_empty() || self.methods.contains(key.method))
            && self
                .headers
                .iter()
                .all(|(name, value)| key.headers.get_all(name).iter().any(|have| have == value))
    }

    fn matches_host(&self, host: Option<&str>) -> bool {
        match (&self.host, host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(config::HostMatch::Exact(want)), Some(host)) => host.eq_ignore_ascii_case(want),
            (Some(config::HostMatch::Suffix(suffix)), Some(host)) => {
                host.len() > suffix.len()
                    && host.as_bytes()[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }
}

/// Exact, or prefix on segment boundaries: `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`.
fn path_matches(rule: &config::PathMatch, path: &str) -> bool {
    match rule {
        config::PathMatch::Exact(exact) => path == exact,
        config::PathMatch::Prefix(prefix) => {
            path.starts_with(prefix.as_str())
                && (prefix.ends_with('/')
                    || path.len() == prefix.len()
                    || path.as_bytes()[prefix.len()] == b'/')
        }
    }
}

/// The host part of an authority: `Example.com:8080` → `Example.com`, `[::1]:80` → `[::1]`.
pub fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rfind(':') {
        Some(colon) => &authority[..colon],
        None => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::{HostMatch, PathMatch};

    fn matcher(
        host: Option<HostMatch>,
        path: PathMatch,
        methods: &[&str],
        headers: &[(&'static str, &'static str)],
    ) -> Matcher {
        Matcher {
            host,
            path,
            methods: methods.iter().map(|method| method.parse().unwrap()).collect(),
            headers: headers
                .iter()
                .map(|(name, value)| (HeaderName::from_static(name), HeaderValue::from_static(value)))
                .collect(),
        }
    }

    fn key<'a>(
        host: Option<&'a str>,
        path: &'a str,
        method: &'a Method,
        headers: &'a HeaderMap,
    ) -> RequestKey<'a> {
        RequestKey { host, path, method, headers }
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        let api = PathMatch::Prefix("/api".into());
        assert!(path_matches(&api, "/api"));
        assert!(path_matches(&api, "/api/"));
        assert!(path_matches(&api, "/api/v1/users"));
        assert!(!path_matches(&api, "/apix"));
        assert!(!path_matches(&api, "/ap"));
        let slash = PathMatch::Prefix("/api/".into());
        assert!(path_matches(&slash, "/api/x"));
        assert!(!path_matches(&slash, "/api"));
        assert!(path_matches(&PathMatch::Prefix("/".into()), "/anything"));
        assert!(path_matches(&PathMatch::Exact("/health".into()), "/health"));
        assert!(!path_matches(&PathMatch::Exact("/health".into()), "/health/"));
    }

    #[test]
    fn hosts_match_exactly_or_by_suffix_in_any_case() {
        let headers = HeaderMap::new();
        let get = Method::GET;
        let exact = matcher(Some(HostMatch::Exact("api.example.com".into())), PathMatch::default(), &[], &[]);
        assert!(exact.matches(&key(Some("API.example.com"), "/", &get, &headers)));
        assert!(!exact.matches(&key(Some("www.example.com"), "/", &get, &headers)));
        assert!(!exact.matches(&key(None, "/", &get, &headers)));
        let wildcard =
            matcher(Some(HostMatch::Suffix(".example.com".into())), PathMatch::default(), &[], &[]);
        assert!(wildcard.matches(&key(Some("a.Example.com"), "/", &get, &headers)));
        assert!(!wildcard.matches(&key(Some("example.com"), "/", &get, &headers)));
        assert!(!wildcard.matches(&key(Some("badexample.com"), "/", &get, &headers)));
    }

    #[test]
    fn methods_and_headers_must_all_match() {
        let rule = matcher(None, PathMatch::default(), &["GET", "HEAD"], &[("x-tenant", "blue")]);
        let mut headers = HeaderMap::new();
        assert!(!rule.matches(&key(None, "/", &Method::GET, &headers)));
        headers.insert("x-tenant", HeaderValue::from_static("green"));
        assert!(!rule.matches(&key(None, "/", &Method::GET, &headers)));
        headers.append("x-tenant", HeaderValue::from_static("blue"));
        assert!(rule.matches(&key(None, "/", &Method::GET, &headers)));
        assert!(rule.matches(&key(None, "/", &Method::HEAD, &headers)));
        assert!(!rule.matches(&key(None, "/", &Method::POST, &headers)));
    }

    #[test]
    fn host_of_strips_the_port() {
        assert_eq!(host_of("example.com:8080"), "example.com");
        assert_eq!(host_of("example.com"), "example.com");
        assert_eq!(host_of("[::1]:80"), "[::1]");
        assert_eq!(host_of("127.0.0.1:80"), "127.0.0.1");
    }
}
