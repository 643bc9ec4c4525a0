//! `remora init`: the init-container step of sidecar mode. Run once as root (NET_ADMIN) in the pod's
//! network namespace before anything else, it installs the nat rules that send the pod's TCP
//! through the proxy: connections to the pod go to the proxy's `inbound` listener, the pod's own
//! connections to its `outbound` listener; both read the original destination with
//! `SO_ORIGINAL_DST`. `remora inject` adds the init container that runs it.
//!
//! The rules live in our own chains, jumped to from the built-in ones:
//!
//! - `PREROUTING → REMORA_INBOUND`: skipped inbound ports and the proxy's own ports (inbound,
//!   outbound, admin: probes reach the admin port directly) return; any other TCP is redirected to
//!   the inbound port.
//! - `OUTPUT → REMORA_OUTPUT`: the proxy's UID (and mark, if given) returns first, so the proxy's
//!   own connections are never redirected and no loop can form; a connection over `lo` to an
//!   address that is not loopback (the pod calling its own address) goes through `REMORA_INBOUND`
//!   like a connection from outside; other loopback traffic returns (containers of a pod talk over
//!   127.0.0.1 directly); skipped ports and CIDRs return; any other TCP is redirected to the
//!   outbound port.
//!
//! Linkerd returns all of `-o lo` unconditionally, so a pod calling its own address bypasses its
//! proxy; Istio sends it to the inbound side, as we do, but only for the proxy's UID. Sending the
//! application's own-address connections to the inbound chain is the simple rule that keeps "every
//! connection to the pod meets the inbound listener" true.
//!
//! REDIRECT from OUTPUT sends to the loopback address (127.0.0.1, ::1), from PREROUTING to the
//! address the packet came in on: the inbound listener must listen on the wildcard address, the
//! outbound one on loopback or the wildcard.
//!
//! Everything is applied in one `iptables-restore --noflush` transaction per address family (see
//! [`rules`] for how a second run converges to one set of rules), and `--cleanup` takes it all out.

mod iptables;
mod rules;
mod values;

use std::path::Path;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use rules::{Family, Present, Rules};
use values::{Cidr, PortRange};

/// `remora init [--proxy-uid UID] [--inbound-port PORT] …`. The flag names are the ones `remora
/// inject`'s init container passes.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// The UID the proxy runs as: its connections are never redirected.
    #[arg(long, default_value_t = 2102, value_name = "UID")]
    proxy_uid: u32,
    /// The port of the proxy's `inbound` listener, where connections to the pod are redirected.
    #[arg(long, default_value_t = 4143, value_parser = values::port, value_name = "PORT")]
    inbound_port: u16,
    /// The port of the proxy's `outbound` listener, where the pod's own connections are redirected.
    #[arg(long, default_value_t = 4140, value_parser = values::port, value_name = "PORT")]
    outbound_port: u16,
    /// The proxy's admin port: never redirected, so probes and scrapes reach it directly.
    #[arg(long, default_value_t = 9901, value_parser = values::port, value_name = "PORT")]
    admin_port: u16,
    /// Ports (or ranges, `8000-8010`) whose incoming connections go straight to the application.
    #[arg(long, value_delimiter = ',', value_parser = values::port_range, value_name = "PORTS")]
    skip_inbound_ports: Vec<PortRange>,
    /// Destination ports (or ranges) the application reaches directly, not through the proxy.
    #[arg(long, value_delimiter = ',', value_parser = values::port_range, value_name = "PORTS")]
    skip_outbound_ports: Vec<PortRange>,
    /// Destination address blocks (`10.96.0.1/32`, `fd00::/8`) the application reaches directly.
    #[arg(long, value_delimiter = ',', value_parser = values::cidr, value_name = "CIDRS")]
    skip_outbound_cidrs: Vec<Cidr>,
    /// Packets with this mark (decimal or 0x hex) are never redirected either, like the proxy's UID.
    #[arg(long, value_parser = values::mark, value_name = "MARK")]
    proxy_mark: Option<u32>,
    /// IPv6 rules too (ip6tables): `on`, `off`, or `auto` (when ip6tables is installed and the
    /// kernel has IPv6). Default: `off` when installing — IPv6 connections then reach the application
    /// directly, rather than being redirected to listeners that may accept IPv4 only (use `on` with
    /// the sidecar's listeners on `[::]`) — and `auto` with `--cleanup`, which removes whatever was
    /// installed.
    #[arg(long, value_enum)]
    ipv6: Option<Ipv6>,
    /// Print the restore input on stdout and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Remove everything `remora init` added (nothing there is fine).
    #[arg(long)]
    cleanup: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Ipv6 {
    Auto,
    On,
    Off,
}

/// What the run does, per address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Install,
    Cleanup,
}

pub fn run(args: InitArgs) -> ExitCode {
    let ports = [args.inbound_port, args.outbound_port, args.admin_port];
    if ports[0] == ports[1] || ports[0] == ports[2] || ports[1] == ports[2] {
        eprintln!(
            "remora init: --inbound-port, --outbound-port and --admin-port must differ (got {}, {}, {})",
            ports[0], ports[1], ports[2]
        );
        return ExitCode::from(2);
    }
    let action = if args.cleanup { Action::Cleanup } else { Action::Install };
    let rules = Rules {
        proxy_uid: args.proxy_uid,
        proxy_mark: args.proxy_mark,
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        admin_port: args.admin_port,
        skip_inbound_ports: args.skip_inbound_ports,
        skip_outbound_ports: args.skip_outbound_ports,
        skip_outbound_cidrs: args.skip_outbound_cidrs,
    };

    let ipv6 = args.ipv6.unwrap_or(if args.cleanup { Ipv6::Auto } else { Ipv6::Off });
    let mut families = vec![Family::Ipv4];
    match ipv6 {
        Ipv6::Off => {}
        Ipv6::On => families.push(Family::Ipv6),
        Ipv6::Auto => match ipv6_unavailable() {
            None => families.push(Family::Ipv6),
            Some(reason) => eprintln!("remora init: IPv6: skipped (--ipv6 auto: {reason})"),
        },
    }
    for family in families {
        let outcome =
            if args.dry_run { dry_run(&rules, family, action) } else { apply(&rules, family, action, ipv6) };
        if let Err(error) = outcome {
            eprintln!("remora init: {}: {error}", label(family));
            return ExitCode::FAILURE;
        }
    }
    if !args.dry_run && action == Action::Install {
        eprintln!(
            "remora init: done: inbound TCP to port {}, outbound TCP to port {}; UID {} is never redirected",
            rules.inbound_port, rules.outbound_port, rules.proxy_uid
        );
    }
    ExitCode::SUCCESS
}

/// Why `--ipv6 auto` leaves IPv6 alone here, if it does.
fn ipv6_unavailable() -> Option<&'static str> {
    if !Path::new("/proc/net/if_inet6").exists() {
        return Some("the kernel has no IPv6");
    }
    if iptables::find(Family::Ipv6.restore_program()).is_none() {
        return Some("ip6tables-restore not found");
    }
    None
}

fn label(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "IPv4",
        Family::Ipv6 => "IPv6",
    }
}

fn apply(rules: &Rules, family: Family, action: Action, ipv6: Ipv6) -> Result<(), iptables::Error> {
    let name = label(family);
    let present = match iptables::save_nat(family) {
        Ok(saved) => Present::parse(&saved),
        // `auto` is best effort for IPv6: a kernel without IPv6 nat, say, is not a failure.
        Err(error) if family == Family::Ipv6 && ipv6 == Ipv6::Auto => {
            eprintln!("remora init: {name}: skipped (--ipv6 auto: {error})");
            return Ok(());
        }
        Err(error) => return Err(error),
    };
    let input = match action {
        Action::Install => {
            eprintln!("remora init: {name}: {}", describe_install(rules, family, &present));
            rules.install(family, &present)
        }
        Action::Cleanup => {
            if present.is_empty() {
                eprintln!("remora init: {name}: nothing of remora's in the nat table");
                return Ok(());
            }
            eprintln!("remora init: {name}: removing {}", describe_present(&present));
            rules::cleanup(&present)
        }
    };
    iptables::restore(family, &input)?;
    eprintln!("remora init: {name}: applied with {} --noflush", family.restore_program());
    Ok(())
}

/// Prints the restore input. The current rules are read when that is possible (to show exactly
/// what a real run would apply); otherwise (not root, no iptables) the input is the one for a
/// namespace without our rules.
fn dry_run(rules: &Rules, family: Family, action: Action) -> Result<(), iptables::Error> {
    let name = label(family);
    let present = match iptables::save_nat(family) {
        Ok(saved) => Present::parse(&saved),
        Err(error) => {
            eprintln!("remora init: {name}: cannot read the nat table ({error}); showing the input for an empty one");
            match action {
                Action::Install => Present::default(),
                // What a run after an install would remove.
                Action::Cleanup => Present {
                    prerouting_jumps: 1,
                    output_jumps: 1,
                    chains: vec![rules::INBOUND_CHAIN.to_owned(), rules::OUTPUT_CHAIN.to_owned()],
                    ..Present::default()
                },
            }
        }
    };
    let input = match action {
        Action::Install => rules.install(family, &present),
        Action::Cleanup => rules::cleanup(&present),
    };
    eprintln!("remora init: {name}: dry run, nothing changed");
    print!("# {} --noflush\n{input}", family.restore_program());
    Ok(())
}

fn describe_install(rules: &Rules, family: Family, present: &Present) -> String {
    let count = rules.chain_rules(family).len();
    let verb = if present.is_empty() { "installing" } else { "replacing the earlier rules with" };
    format!(
        "{verb} {count} rules in {} and {}, jumped to from PREROUTING and OUTPUT",
        rules::INBOUND_CHAIN,
        rules::OUTPUT_CHAIN
    )
}

fn describe_present(present: &Present) -> String {
    let jumps = present.prerouting_jumps + present.output_jumps + present.other_jumps.len();
    let chains = if present.chains.is_empty() { "no chains".to_owned() } else { present.chains.join(", ") };
    format!("{jumps} jump{} and {chains}", if jumps == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        init: InitArgs,
    }

    fn parse(args: &[&str]) -> Result<InitArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("init").chain(args.iter().copied())).map(|cli| cli.init)
    }

    #[test]
    fn the_defaults_are_remora_injects() {
        let args = parse(&[]).unwrap();
        assert_eq!(
            (args.proxy_uid, args.inbound_port, args.outbound_port, args.admin_port),
            (2102, 4143, 4140, 9901)
        );
        assert_eq!(args.ipv6, None, "off when installing, auto when cleaning up");
        assert!(
            args.skip_inbound_ports.is_empty() && args.proxy_mark.is_none() && !args.dry_run && !args.cleanup
        );
    }

    #[test]
    fn the_flags_remora_inject_passes_parse() {
        let args = parse(&[
            "--proxy-uid",
            "2102",
            "--inbound-port",
            "4143",
            "--outbound-port",
            "4140",
            "--skip-inbound-ports",
            "9901,22,5432",
            "--skip-outbound-ports",
            "3306",
        ])
        .unwrap();
        assert_eq!(args.skip_inbound_ports, [9901, 22, 5432].map(PortRange::single));
        assert_eq!(args.skip_outbound_ports, [PortRange::single(3306)]);
        let args = parse(&[
            "--skip-outbound-cidrs",
            "10.96.0.1/32,fd00::/8",
            "--proxy-mark",
            "0x66",
            "--ipv6",
            "off",
        ])
        .unwrap();
        assert_eq!(args.skip_outbound_cidrs.len(), 2);
        assert_eq!((args.proxy_mark, args.ipv6), (Some(0x66), Some(Ipv6::Off)));
    }

    #[test]
    fn bad_values_are_refused_naming_the_flag() {
        for (flag, value) in [
            ("--skip-inbound-ports", "22,70000"),
            ("--skip-inbound-ports", "22,,23"),
            ("--skip-outbound-ports", "ssh"),
            ("--skip-outbound-cidrs", "10.96.0.1/40"),
            ("--inbound-port", "0"),
            ("--outbound-port", "-4"),
            ("--admin-port", "99999"),
            ("--proxy-uid", "-1"),
            ("--proxy-mark", "0"),
            ("--ipv6", "maybe"),
        ] {
            let error =
                parse(&[&format!("{flag}={value}")]).expect_err(&format!("{flag} {value} was accepted"));
            assert_eq!(error.exit_code(), 2, "{flag} {value}");
            assert!(
                error.to_string().contains(flag),
                "{flag} {value}: the error does not name the flag: {error}"
            );
        }
    }
}
