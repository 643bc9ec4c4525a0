//! Durations as users write them: `"250ms"`, `"1s"`, `"5m"`, `"1h 30m"`.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A duration read from a human string and written back the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Self(std::time::Duration::from_millis(millis))
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<Duration> for std::time::Duration {
    fn from(value: Duration) -> Self {
        value.0
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl std::str::FromStr for Duration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        if trimmed == "0" {
            return Ok(Self::default());
        }
        humantime::parse_duration(trimmed).map(Self).map_err(|error| {
            format!("invalid duration {text:?}: {error} (write e.g. \"250ms\", \"1s\", \"5m\")")
        })
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"250ms\" or \"5s\"")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
                text.parse().map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Duration, E> {
                if value == 0 {
                    Ok(Duration::default())
                } else {
                    Err(E::custom(format!("a duration needs a unit: write \"{value}s\" or \"{value}ms\"")))
                }
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Duration, E> {
                match u64::try_from(value) {
                    Ok(value) => self.visit_u64(value),
                    Err(_) => Err(E::custom("a duration cannot be negative")),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_units_users_write() {
        assert_eq!("250ms".parse::<Duration>().unwrap(), Duration::from_millis(250));
        assert_eq!("1s".parse::<Duration>().unwrap(), Duration::from_secs(1));
        assert_eq!("5m".parse::<Duration>().unwrap(), Duration::from_secs(300));
        assert_eq!("0".parse::<Duration>().unwrap(), Duration::default());
        assert!("5".parse::<Duration>().is_err());
        assert!("fast".parse::<Duration>().is_err());
    }

    #[test]
    fn displays_back_in_the_same_style() {
        assert_eq!(Duration::from_millis(250).to_string(), "250ms");
        assert_eq!(Duration::from_secs(90).to_string(), "1m 30s");
        assert_eq!(Duration::default().to_string(), "0s");
    }
}
