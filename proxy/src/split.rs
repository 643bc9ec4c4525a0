//! Step 4 of a request's way: a route's weighted backends.
//!
//! Weights are exact over every configured backend (a canary at 10% gets 10%, healthy or not; no
//! renormalisation). A request falls on a point in `0..total`, drawn at random or, with stickiness,
//! from a hash of the user's key; each backend owns a contiguous range of points, in file order. Raising
//! a later backend's weight therefore moves users only one way: from earlier backends to it.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use http::header::{HeaderName, COOKIE};
use http::HeaderMap;
use remora_config as config;

use crate::cluster::Cluster;

#[derive(Debug)]
pub struct Split {
    targets: Box<[Target]>,
    /// `ends[i]` is one past the last point of `targets[i]`.
    ends: Box<[u32]>,
    total: u32,
    sticky: Option<StickyKey>,
}

#[derive(Debug)]
pub struct Target {
    pub cluster: Arc<Cluster>,
    pub weight: u32,
    /// Where this route's requests to this cluster are counted.
    pub series: Arc<crate::stats::Series>,
}

#[derive(Debug)]
enum StickyKey {
    Header(HeaderName),
    Cookie(Box<str>),
}

/// Pins a request to the backend of one version (`x-remora-version: v2`), for testing a canary.
pub const X_REMORA_VERSION: HeaderName = HeaderName::from_static("x-remora-version");

impl Split {
    /// `targets` must hold at least one positive weight (validation guarantees it).
    pub fn new(targets: Vec<Target>, sticky: Option<&config::Sticky>) -> Self {
        let mut total = 0u32;
        let ends = targets
            .iter()
            .map(|target| {
                total = total.saturating_add(target.weight);
                total
            })
            .collect();
        let sticky = sticky.and_then(|sticky| match sticky {
            config::Sticky::Header(name) => {
                HeaderName::from_bytes(name.as_bytes()).ok().map(StickyKey::Header)
            }
            config::Sticky::Cookie(name) => Some(StickyKey::Cookie(name.as_str().into())),
        });
        Self { targets: targets.into_boxed_slice(), ends, total: total.max(1), sticky }
    }

    /// The backend for this request.
    pub fn pick(&self, headers: &HeaderMap) -> &Target {
        if self.targets.len() == 1 {
            return &self.targets[0];
        }
        if let Some(pinned) =
            headers.get(X_REMORA_VERSION).and_then(|version| self.by_version(version.as_bytes()))
        {
            return pinned;
        }
        let point = match self.sticky_hash(headers) {
            Some(hash) => (hash % u64::from(self.total)) as u32,
            None => fastrand::u32(0..self.total),
        };
        self.at(point)
    }

    fn at(&self, point: u32) -> &Target {
        let index = self.ends.partition_point(|end| *end <= point);
        &self.targets[index.min(self.targets.len() - 1)]
    }

    fn by_version(&self, version: &[u8]) -> Option<&Target> {
        self.targets.iter().find(|target| target.cluster.version.as_bytes() == version)
    }

    fn sticky_hash(&self, headers: &HeaderMap) -> Option<u64> {
        let key: &[u8] = match self.sticky.as_ref()? {
            StickyKey::Header(name) => headers.get(name)?.as_bytes(),
            StickyKey::Cookie(name) => cookie(headers, name)?,
        };
        // A fixed-key hasher: the same user lands on the same point in every process and restart.
        let mut hasher = FixedState.build_hasher();
        hasher.write(key);
        Some(hasher.finish())
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(COOKIE).iter().find_map(|value| {
        value.as_bytes().split(|byte| *byte == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let rest = pair.strip_prefix(name.as_bytes())?;
            rest.strip_prefix(b"=")
        })
    })
}

/// FNV-1a, so that sticky placement does not change between processes (unlike `RandomState`).
struct FixedState;

impl BuildHasher for FixedState {
    type Hasher = Fnv;
    fn build_hasher(&self) -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        // A final mix spreads FNV's low bits, which `% total` relies on.
        let mut hash = self.0;
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 33;
        hash
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Cluster;

    fn split(weights: &[(&str, u32)], sticky: Option<config::Sticky>) -> Split {
        let targets = weights
            .iter()
            .map(|(version, weight)| Target {
                cluster: Arc::new(Cluster::for_tests(version)),
                weight: *weight,
                series: crate::stats::Stats::new(1).series("route", "cluster", version),
            })
            .collect();
        Split::new(targets, sticky.as_ref())
    }

    fn shares(split: &Split, requests: usize) -> Vec<usize> {
        let mut counts = vec![0; split.targets.len()];
        let headers = HeaderMap::new();
        for _ in 0..requests {
            let picked = split.pick(&headers);
            let index = split.targets.iter().position(|target| std::ptr::eq(target, picked)).unwrap();
            counts[index] += 1;
        }
        counts
    }

    #[test]
    fn points_fall_in_each_backends_range() {
        let split = split(&[("v1", 90), ("v2", 10)], None);
        assert_eq!(&*split.at(0).cluster.version, "v1");
        assert_eq!(&*split.at(89).cluster.version, "v1");
        assert_eq!(&*split.at(90).cluster.version, "v2");
        assert_eq!(&*split.at(99).cluster.version, "v2");
    }

    #[test]
    fn weight_zero_gets_nothing() {
        let split = split(&[("v1", 0), ("v2", 5), ("v3", 0)], None);
        assert_eq!(shares(&split, 10_000), [0, 10_000, 0]);
    }

    #[test]
    fn random_points_follow_the_weights() {
        let split = split(&[("v1", 75), ("v2", 25)], None);
        let counts = shares(&split, 100_000);
        // 25% of 100,000 with σ ≈ 137: allow 6σ.
        assert!((24_180..=25_820).contains(&counts[1]), "{counts:?}");
    }

    #[test]
    fn the_version_header_pins_a_request() {
        let split = split(&[("v1", 100), ("v2", 0)], None);
        let mut headers = HeaderMap::new();
        headers.insert(X_REMORA_VERSION, "v2".parse().unwrap());
        assert_eq!(&*split.pick(&headers).cluster.version, "v2");
        headers.insert(X_REMORA_VERSION, "v9".parse().unwrap());
        assert_eq!(&*split.pick(&headers).cluster.version, "v1");
    }

    #[test]
    fn sticky_users_stay_put_and_only_move_toward_a_growing_canary() {
        let sticky = Some(config::Sticky::Header("x-user-id".into()));
        let at_10 = split(&[("v1", 90), ("v2", 10)], sticky.clone());
        let at_25 = split(&[("v1", 75), ("v2", 25)], sticky);
        let mut on_canary = 0;
        for user in 0..2_000 {
            let mut headers = HeaderMap::new();
            headers.insert("x-user-id", user.to_string().parse().unwrap());
            let first = at_10.pick(&headers).cluster.version.clone();
            assert_eq!(at_10.pick(&headers).cluster.version, first, "a user must stay on one side");
            let later = at_25.pick(&headers).cluster.version.clone();
            if &*first == "v2" {
                assert_eq!(&*later, "v2", "user {user} moved back from the canary");
                on_canary += 1;
            }
        }
        assert!((100..=300).contains(&on_canary), "about 10% of 2,000 users: {on_canary}");
    }

    #[test]
    fn sticky_cookie_is_read_from_the_cookie_header() {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, "a=1; session=abc; b=2".parse().unwrap());
        assert_eq!(cookie(&headers, "session"), Some(&b"abc"[..]));
        assert_eq!(cookie(&headers, "sess"), None);
    }
}
