//! The rules `remora init` installs, as `iptables-restore --noflush` input built by pure functions
//! from the flags and from what `iptables-save -t nat` shows is there already.
//!
//! Every rule is written the way iptables-save prints it back (`-p tcp -m tcp --dport`, marks in
//! hex, masked CIDRs, `! -d` before `-o`), so what was applied can be compared line for line with
//! what the kernel holds.

use std::fmt::Write as _;

use super::values::{Cidr, PortRange};

/// Where connections to the pod are redirected: jumped to from PREROUTING (connections arriving
/// from the network) and from [`OUTPUT_CHAIN`] (the pod's own connections to its own address).
pub const INBOUND_CHAIN: &str = "REMORA_INBOUND";
/// Where the pod's own connections are redirected: jumped to from OUTPUT.
pub const OUTPUT_CHAIN: &str = "REMORA_OUTPUT";
/// Every chain whose name starts with this is ours: `--cleanup` removes it.
const PREFIX: &str = "REMORA_";

const PREROUTING_JUMP: &str = "PREROUTING -j REMORA_INBOUND";
const OUTPUT_JUMP: &str = "OUTPUT -j REMORA_OUTPUT";

/// Which of the two tables (and tools) a rule set is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn restore_program(self) -> &'static str {
        match self {
            Family::Ipv4 => "iptables-restore",
            Family::Ipv6 => "ip6tables-restore",
        }
    }

    pub fn save_program(self) -> &'static str {
        match self {
            Family::Ipv4 => "iptables-save",
            Family::Ipv6 => "ip6tables-save",
        }
    }

    /// The addresses only reachable over `lo` that are not the pod's own: all of them are loopback.
    fn loopback(self) -> &'static str {
        match self {
            Family::Ipv4 => "127.0.0.0/8",
            Family::Ipv6 => "::1/128",
        }
    }

    fn holds(self, cidr: &Cidr) -> bool {
        match self {
            Family::Ipv4 => cidr.is_ipv4(),
            Family::Ipv6 => !cidr.is_ipv4(),
        }
    }
}

/// What the flags ask for. The defaults are `remora inject`'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The proxy's UID (2102): its connections are never redirected.
    pub proxy_uid: u32,
    /// Packets with this mark are never redirected either (none by default).
    pub proxy_mark: Option<u32>,
    /// The inbound listener's port (4143).
    pub inbound_port: u16,
    /// The outbound listener's port (4140).
    pub outbound_port: u16,
    /// The admin port (9901): probes reach it directly.
    pub admin_port: u16,
    pub skip_inbound_ports: Vec<PortRange>,
    pub skip_outbound_ports: Vec<PortRange>,
    /// Both families' blocks; each rule set takes its own.
    pub skip_outbound_cidrs: Vec<Cidr>,
}

impl Rules {
    /// The rules of our chains, in order, as iptables-save prints them.
    pub fn chain_rules(&self, family: Family) -> Vec<String> {
        let mut rules = Vec::new();

        // Inbound: the ports to leave alone (the skipped ones, then the proxy's own, so nothing
        // reaching a listener of the proxy is redirected again and the kubelet's probes reach the
        // admin port), then every other TCP connection to the inbound listener.
        let mut kept: Vec<PortRange> = Vec::new();
        let own = [self.inbound_port, self.outbound_port, self.admin_port].map(PortRange::single);
        for range in self.skip_inbound_ports.iter().chain(&own) {
            if !kept.contains(range) {
                kept.push(*range);
            }
        }
        for range in &kept {
            rules.push(format!("-A {INBOUND_CHAIN} -p tcp -m tcp --dport {range} -j RETURN"));
        }
        rules.push(format!("-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}", self.inbound_port));

        // Outbound: the proxy's own connections first (whatever they go to: no loop can form).
        rules.push(format!("-A {OUTPUT_CHAIN} -m owner --uid-owner {} -j RETURN", self.proxy_uid));
        if let Some(mark) = self.proxy_mark {
            rules.push(format!("-A {OUTPUT_CHAIN} -m mark --mark {mark:#x} -j RETURN"));
        }
        // Over `lo` to an address that is not loopback means to the pod's own address: treated as
        // a connection to the pod from outside (the inbound chain, its skips and the inbound
        // listener), so calling yourself by your address sees the same policy as anyone else. The
        // proxy's own connections to the pod's address (inbound forwarding to the application)
        // returned above.
        rules.push(format!("-A {OUTPUT_CHAIN} ! -d {} -o lo -j {INBOUND_CHAIN}", family.loopback()));
        // Other loopback traffic (127.0.0.0/8, ::1) stays as it is: containers of one pod talk
        // directly.
        rules.push(format!("-A {OUTPUT_CHAIN} -o lo -j RETURN"));
        for range in &self.skip_outbound_ports {
            rules.push(format!("-A {OUTPUT_CHAIN} -p tcp -m tcp --dport {range} -j RETURN"));
        }
        for cidr in self.skip_outbound_cidrs.iter().filter(|cidr| family.holds(cidr)) {
            rules.push(format!("-A {OUTPUT_CHAIN} -d {cidr} -j RETURN"));
        }
        rules.push(format!("-A {OUTPUT_CHAIN} -p tcp -j REDIRECT --to-ports {}", self.outbound_port));
        rules
    }

    /// The restore input that makes the nat table hold exactly one set of our rules, whatever it
    /// held before (`present`): the chain declarations flush our chains (or create them), and the
    /// jumps from the built-in chains, which no declaration flushes, are added only when missing
    /// (and trimmed to one where an earlier run left several).
    pub fn install(&self, family: Family, present: &Present) -> String {
        let mut text = String::from("*nat\n");
        for chain in [INBOUND_CHAIN, OUTPUT_CHAIN] {
            let _ = writeln!(text, ":{chain} - [0:0]");
        }
        for rule in self.chain_rules(family) {
            text.push_str(&rule);
            text.push('\n');
        }
        for (jump, count) in
            [(PREROUTING_JUMP, present.prerouting_jumps), (OUTPUT_JUMP, present.output_jumps)]
        {
            if count == 0 {
                let _ = writeln!(text, "-A {jump}");
            }
            for _ in 1..count {
                let _ = writeln!(text, "-D {jump}");
            }
        }
        text.push_str("COMMIT\n");
        text
    }
}

/// The restore input that removes every trace of us: the rules that jump to our chains, then the
/// chains. Declaring a chain creates it when it is missing, so the input is the same shape whether
/// or not an earlier run left anything, and removing nothing succeeds.
pub fn cleanup(present: &Present) -> String {
    let mut chains = vec![INBOUND_CHAIN.to_owned(), OUTPUT_CHAIN.to_owned()];
    for chain in &present.chains {
        if !chains.contains(chain) {
            chains.push(chain.clone());
        }
    }
    let mut text = String::from("*nat\n");
    for chain in &chains {
        // With --noflush, declaring an existing chain flushes it, which drops the references
        // between our own chains.
        let _ = writeln!(text, ":{chain} - [0:0]");
    }
    for _ in 0..present.prerouting_jumps {
        let _ = writeln!(text, "-D {PREROUTING_JUMP}");
    }
    for _ in 0..present.output_jumps {
        let _ = writeln!(text, "-D {OUTPUT_JUMP}");
    }
    for rule in &present.other_jumps {
        let _ = writeln!(text, "-D {rule}");
    }
    for chain in &chains {
        let _ = writeln!(text, "-X {chain}");
    }
    text.push_str("COMMIT\n");
    text
}

/// What of ours the nat table holds, read from `iptables-save -t nat`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Present {
    /// How many `-A PREROUTING -j REMORA_INBOUND` rules (normally 0 or 1).
    pub prerouting_jumps: usize,
    /// How many `-A OUTPUT -j REMORA_OUTPUT` rules.
    pub output_jumps: usize,
    /// Our chains (`REMORA_*`) that exist.
    pub chains: Vec<String>,
    /// Any other rule outside our chains that jumps into one of them (`CHAIN spec…`, without the
    /// `-A`), which would keep a chain from being deleted.
    pub other_jumps: Vec<String>,
}

impl Present {
    /// Reads iptables-save's output; only its `*nat` table is looked at.
    pub fn parse(save: &str) -> Present {
        let mut present = Present::default();
        let mut in_nat = false;
        for line in save.lines().map(str::trim) {
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
                continue;
            }
            if !in_nat {
                continue;
            }
            if let Some(declaration) = line.strip_prefix(':') {
                let chain = declaration.split_whitespace().next().unwrap_or_default();
                if chain.starts_with(PREFIX) {
                    present.chains.push(chain.to_owned());
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                if rule == PREROUTING_JUMP {
                    present.prerouting_jumps += 1;
                } else if rule == OUTPUT_JUMP {
                    present.output_jumps += 1;
                } else if !rule.starts_with(PREFIX) && jumps_to_ours(rule) {
                    present.other_jumps.push(rule.to_owned());
                }
            }
        }
        present
    }

    /// Whether anything of ours is there.
    pub fn is_empty(&self) -> bool {
        self == &Present::default()
    }
}

fn jumps_to_ours(rule: &str) -> bool {
    let words: Vec<&str> = rule.split_whitespace().collect();
    words.windows(2).any(|pair| matches!(pair[0], "-j" | "-g") && pair[1].starts_with(PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::values::{cidr, port_range};

    fn defaults() -> Rules {
        Rules {
            proxy_uid: 2102,
            proxy_mark: None,
            inbound_port: 4143,
            outbound_port: 4140,
            admin_port: 9901,
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            skip_outbound_cidrs: Vec::new(),
        }
    }

    #[test]
    fn the_defaults_in_a_namespace_without_our_rules() {
        assert_eq!(
            defaults().install(Family::Ipv4, &Present::default()),
            "*nat
:REMORA_INBOUND - [0:0]
:REMORA_OUTPUT - [0:0]
-A REMORA_INBOUND -p tcp -m tcp --dport 4143 -j RETURN
-A REMORA_INBOUND -p tcp -m tcp --dport 4140 -j RETURN
-A REMORA_INBOUND -p tcp -m tcp --dport 9901 -j RETURN
-A REMORA_INBOUND -p tcp -j REDIRECT --to-ports 4143
-A REMORA_OUTPUT -m owner --uid-owner 2102 -j RETURN
-A REMORA_OUTPUT ! -d 127.0.0.0/8 -o lo -j REMORA_INBOUND
-A REMORA_OUTPUT -o lo -j RETURN
-A REMORA_OUTPUT -p tcp -j REDIRECT --to-ports 4140
-A PREROUTING -j REMORA_INBOUND
-A OUTPUT -j REMORA_OUTPUT
COMMIT
"
        );
    }

    #[test]
    fn every_skip_option_and_the_mark() {
        let rules = Rules {
            proxy_uid: 1337,
            proxy_mark: Some(0x66),
            inbound_port: 15006,
            outbound_port: 15001,
            admin_port: 15000,
            // 15000 is the admin port too, as `remora inject` passes it: one rule, not two.
            skip_inbound_ports: ["22", "5432", "15000", "8000-8010"]
                .map(|text| port_range(text).unwrap())
                .to_vec(),
            skip_outbound_ports: ["3306", "6379-6380"].map(|text| port_range(text).unwrap()).to_vec(),
            skip_outbound_cidrs: ["10.96.0.1/32", "fd00::/8", "169.254.0.0/16"]
                .map(|text| cidr(text).unwrap())
                .to_vec(),
        };
        assert_eq!(
            rules.install(Family::Ipv4, &Present::default()),
            "*nat
:REMORA_INBOUND - [0:0]
:REMORA_OUTPUT - [0:0]
-A REMORA_INBOUND -p tcp -m tcp --dport 22 -j RETURN
-A REMORA_INBOUND -p tcp -m tcp --dport 5432 -j RETURN
-A REMORA_INBOUND -p tcp -m tcp --dport 15000 -j RETURN
-A REMORA_INBOUND -p tcp -m tcp --dport 8000:8010 -j RETURN
-A REMORA_INBOUND -p tcp -m tcp --dport 15006 -j RETURN
-A REMORA_INBOUND -p tcp -m tcp --dport 15001 -j RETURN
-A REMORA_INBOUND -p tcp -j REDIRECT --to-ports 15006
-A REMORA_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A REMORA_OUTPUT -m mark --mark 0x66 -j RETURN
-A REMORA_OUTPUT ! -d 127.0.0.0/8 -o lo -j REMORA_INBOUND
-A REMORA_OUTPUT -o lo -j RETURN
-A REMORA_OUTPUT -p tcp -m tcp --dport 3306 -j RETURN
-A REMORA_OUTPUT -p tcp -m tcp --dport 6379:6380 -j RETURN
-A REMORA_OUTPUT -d 10.96.0.1/32 -j RETURN
-A REMORA_OUTPUT -d 169.254.0.0/16 -j RETURN
-A REMORA_OUTPUT -p tcp -j REDIRECT --to-ports 15001
-A PREROUTING -j REMORA_INBOUND
-A OUTPUT -j REMORA_OUTPUT
COMMIT
"
        );
        let v6 = rules.install(Family::Ipv6, &Present::default());
        assert!(v6.contains("-A REMORA_OUTPUT ! -d ::1/128 -o lo -j REMORA_INBOUND\n"), "{v6}");
        assert!(v6.contains("-A REMORA_OUTPUT -d fd00::/8 -j RETURN\n"), "{v6}");
        assert!(!v6.contains("10.96.0.1"), "an IPv4 block in the IPv6 rules: {v6}");
    }

    const SAVED: &str = "# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j REMORA_NOT_NAT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:REMORA_INBOUND - [0:0]
:REMORA_OUTPUT - [0:0]
-A PREROUTING -j REMORA_INBOUND
-A PREROUTING -j REMORA_INBOUND
-A PREROUTING -i eth0 -j REMORA_INBOUND
-A OUTPUT -j REMORA_OUTPUT
-A OUTPUT -j DOCKER
-A REMORA_INBOUND -p tcp -j REDIRECT --to-ports 4143
-A REMORA_OUTPUT ! -d 127.0.0.0/8 -o lo -j REMORA_INBOUND
COMMIT
# Completed
";

    #[test]
    fn what_is_present_is_read_from_the_nat_table_only() {
        assert_eq!(
            Present::parse(SAVED),
            Present {
                prerouting_jumps: 2,
                output_jumps: 1,
                chains: vec!["REMORA_INBOUND".to_owned(), "REMORA_OUTPUT".to_owned()],
                other_jumps: vec!["PREROUTING -i eth0 -j REMORA_INBOUND".to_owned()],
            }
        );
        let fresh = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        assert!(Present::parse(fresh).is_empty());
        assert!(Present::parse("").is_empty());
    }

    #[test]
    fn a_second_install_adds_no_jump_and_trims_duplicates() {
        let present = Present { prerouting_jumps: 1, output_jumps: 1, ..Present::default() };
        let text = defaults().install(Family::Ipv4, &present);
        assert!(!text.contains("PREROUTING") && !text.contains("-A OUTPUT"), "{text}");
        assert!(text.starts_with("*nat\n:REMORA_INBOUND - [0:0]\n:REMORA_OUTPUT - [0:0]\n"), "{text}");

        let text = defaults().install(Family::Ipv4, &Present::parse(SAVED));
        assert!(text.ends_with("-A REMORA_OUTPUT -p tcp -j REDIRECT --to-ports 4140\n-D PREROUTING -j REMORA_INBOUND\nCOMMIT\n"), "{text}");
    }

    #[test]
    fn cleanup_removes_jumps_then_chains_and_needs_nothing_present() {
        assert_eq!(
            cleanup(&Present::parse(SAVED)),
            "*nat
:REMORA_INBOUND - [0:0]
:REMORA_OUTPUT - [0:0]
-D PREROUTING -j REMORA_INBOUND
-D PREROUTING -j REMORA_INBOUND
-D OUTPUT -j REMORA_OUTPUT
-D PREROUTING -i eth0 -j REMORA_INBOUND
-X REMORA_INBOUND
-X REMORA_OUTPUT
COMMIT
"
        );
        assert_eq!(
            cleanup(&Present::default()),
            "*nat\n:REMORA_INBOUND - [0:0]\n:REMORA_OUTPUT - [0:0]\n-X REMORA_INBOUND\n-X REMORA_OUTPUT\nCOMMIT\n"
        );
        let helper = Present {
            chains: vec!["REMORA_OUTPUT".to_owned(), "REMORA_EXTRA".to_owned()],
            ..Present::default()
        };
        let text = cleanup(&helper);
        assert!(text.contains(":REMORA_EXTRA - [0:0]\n") && text.contains("-X REMORA_EXTRA\n"), "{text}");
    }
}
