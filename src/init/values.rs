//! The values `remora init`'s flags take: ports and port ranges, CIDRs and a packet mark. Each parser
//! is a clap value parser, so a bad value is refused before anything runs, with clap's message
//! naming the flag (`invalid value '70000' for '--skip-inbound-ports <PORTS>': …`) and exit code 2.

use std::fmt;
use std::net::IpAddr;

/// A TCP port or an inclusive range of them (`8000-8010`), as a skip list holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const fn single(port: u16) -> PortRange {
        PortRange { first: port, last: port }
    }
}

/// As iptables's `--dport` takes it (and iptables-save prints it): `22` or `8000:8010`.
impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// One item of a comma-separated port list: `22` or `8000-8010` (port 0 is refused: it is no port).
pub fn port_range(text: &str) -> Result<PortRange, String> {
    let text = text.trim();
    match text.split_once('-') {
        None => Ok(PortRange::single(port_number(text)?)),
        Some((first, last)) => {
            let (first, last) = (port_number(first.trim())?, port_number(last.trim())?);
            if first > last {
                return Err(format!("the range {first}-{last} is backwards"));
            }
            Ok(PortRange { first, last })
        }
    }
}

/// A port a listener of the proxy uses: 1..=65535.
pub fn port(text: &str) -> Result<u16, String> {
    port_number(text.trim())
}

fn port_number(text: &str) -> Result<u16, String> {
    if text.is_empty() {
        return Err("an empty port (a stray comma?)".to_owned());
    }
    match text.parse::<u16>() {
        Ok(0) => Err("port 0 is not a port".to_owned()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("`{text}` is not a port (1-65535)")),
    }
}

/// An address block. The address is stored masked, as iptables stores (and prints) it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn is_ipv4(&self) -> bool {
        self.address.is_ipv4()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// `10.96.0.0/12`, `fd00::/8`, or a bare address (a /32 or /128). Host bits are cleared
/// (`10.1.2.3/8` is `10.0.0.0/8`), as iptables would do.
pub fn cidr(text: &str) -> Result<Cidr, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("an empty CIDR (a stray comma?)".to_owned());
    }
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    let address: IpAddr = address.parse().map_err(|_| format!("`{address}` is not an IP address"))?;
    let bits = if address.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => bits,
        Some(prefix) => match prefix.parse::<u8>() {
            Ok(prefix) if prefix <= bits => prefix,
            _ => return Err(format!("`/{prefix}` is not a prefix length (0-{bits})")),
        },
    };
    let address = match address {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    };
    Ok(Cidr { address, prefix })
}

/// A packet mark (`--proxy-mark`): decimal or `0x` hexadecimal, not 0 (every unmarked packet carries
/// mark 0, so exempting it would exempt everything).
pub fn mark(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse::<u32>(),
    };
    match parsed {
        Ok(0) => Err("mark 0 is what every unmarked packet carries".to_owned()),
        Ok(mark) => Ok(mark),
        Err(_) => Err(format!("`{text}` is not a mark (1-4294967295, decimal or 0x hex)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_ranges_parse_and_print_as_iptables_takes_them() {
        assert_eq!(port_range("22"), Ok(PortRange::single(22)));
        assert_eq!(port_range(" 5432 "), Ok(PortRange::single(5432)));
        assert_eq!(port_range("8000-8010"), Ok(PortRange { first: 8000, last: 8010 }));
        assert_eq!(port_range("8000-8010").map(|range| range.to_string()), Ok("8000:8010".to_owned()));
        assert_eq!(port_range("65535").map(|range| range.to_string()), Ok("65535".to_owned()));
    }

    #[test]
    fn bad_ports_are_refused() {
        for bad in ["", "0", "65536", "-1", "http", "22;23", "10-", "-10", "10-5", "1.5"] {
            assert!(port_range(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(port("0").is_err());
        assert_eq!(port("4143"), Ok(4143));
    }

    #[test]
    fn cidrs_parse_masked_and_bare_addresses_are_hosts() {
        let text = |input: &str| cidr(input).map(|cidr| cidr.to_string());
        assert_eq!(text("10.96.0.1/32"), Ok("10.96.0.1/32".to_owned()));
        assert_eq!(text("10.96.0.1"), Ok("10.96.0.1/32".to_owned()));
        assert_eq!(text("10.1.2.3/8"), Ok("10.0.0.0/8".to_owned()));
        assert_eq!(text("0.0.0.0/0"), Ok("0.0.0.0/0".to_owned()));
        assert_eq!(text("fd00::1/8"), Ok("fd00::/8".to_owned()));
        assert_eq!(text("::1"), Ok("::1/128".to_owned()));
        assert!(cidr("fd00::/8").is_ok_and(|cidr| !cidr.is_ipv4()));
    }

    #[test]
    fn bad_cidrs_are_refused() {
        for bad in ["", "10.0.0.0/33", "fd00::/129", "10.0.0/8", "10.0.0.0/", "10.0.0.0/x", "host/32"] {
            assert!(cidr(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn marks_are_decimal_or_hex_and_never_zero() {
        assert_eq!(mark("102"), Ok(102));
        assert_eq!(mark("0x66"), Ok(0x66));
        assert_eq!(mark("0xFFFFFFFF"), Ok(u32::MAX));
        for bad in ["0", "0x0", "", "-1", "0x100000000", "mark"] {
            assert!(mark(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
