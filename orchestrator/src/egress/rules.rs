//! Egress decisions (pure): which host and port a call may reach, and which resolved addresses
//! are refused whatever the host rules say.
//!
//! A host rule matches an exact name (`pypi.org`) or every name below a domain (`*.pypi.org`:
//! `files.pypi.org`, not `pypi.org` itself), on some ports or all; the strictest matching rule
//! decides (deny > ask > allow), and a host no rule matches gets the default (`deny`, or
//! `ask`). After the proxy resolves the name, every address it would connect to is checked:
//! loopback, private, link-local, carrier-grade NAT, multicast and unspecified addresses are
//! refused unless a CIDR the admin lists covers them (an internal package mirror), and the
//! cloud metadata addresses are refused always.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::calls::Decision;

/// `pypi.org` or `*.pypi.org`, lower case, without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The domain below which every name matches (`pypi.org` for `*.pypi.org`).
    Below(String),
}

impl HostPattern {
    /// Parses a pattern; `None` for anything but a name or `*.` and a name.
    pub fn parse(s: &str) -> Option<HostPattern> {
        let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
        let (below, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, s),
        };
        if !valid_name(&name) {
            return None;
        }
        Some(if below {
            HostPattern::Below(name)
        } else {
            HostPattern::Exact(name)
        })
    }

    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(n) => host == n,
            HostPattern::Below(d) => host
                .strip_suffix(d.as_str())
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
        }
    }
}

/// A DNS name (letters, digits, `-`, dots between labels) or an IP address literal.
fn valid_name(name: &str) -> bool {
    if name.parse::<IpAddr>().is_ok() {
        return true;
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The name a client asked for, as rules match it: lower case, no trailing dot, IPv6 literals
/// without brackets. `None` when it is not a name at all.
pub fn normalize_host(host: &str) -> Option<String> {
    let h = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let h = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .map(str::to_string)
        .unwrap_or(h);
    valid_name(&h).then_some(h)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRule {
    pub pattern: HostPattern,
    /// `None`: every port.
    pub ports: Option<Vec<u16>>,
    pub decision: Decision,
    /// Where the rule is, e.g. `defaults.network.hosts[0]`.
    pub id: String,
}

/// One user's egress settings, all layers merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRules {
    pub hosts: Vec<HostRule>,
    /// For a host no rule matches: `Deny` or `Ask`.
    pub default: Decision,
    /// Where `default` comes from.
    pub default_id: String,
    /// Ranges of otherwise refused addresses the admin allows (an internal mirror).
    pub allowed_cidrs: Vec<IpNet>,
}

fn rank(d: Decision) -> u8 {
    match d {
        Decision::Deny => 2,
        Decision::Ask => 1,
        Decision::Allow => 0,
    }
}

impl EgressRules {
    /// The decision for `host:port` and the rule that made it.
    pub fn decide(&self, host: &str, port: u16) -> (Decision, String) {
        let best = self
            .hosts
            .iter()
            .filter(|r| r.pattern.matches(host))
            .filter(|r| r.ports.as_ref().is_none_or(|p| p.contains(&port)))
            // The strictest; of equals, the first.
            .fold(None::<&HostRule>, |best, r| match best {
                Some(b) if rank(b.decision) >= rank(r.decision) => Some(b),
                _ => Some(r),
            });
        match best {
            Some(r) => (r.decision, r.id.clone()),
            None => (self.default, self.default_id.clone()),
        }
    }

    /// Why a connection to `ip` is refused whatever the host rules say, or `Ok`.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), String> {
        let ip = canonical_ip(ip);
        if is_metadata(ip) {
            return Err(format!("{ip} is a cloud metadata address: never reachable"));
        }
        let Some(class) = special_class(ip) else {
            return Ok(());
        };
        if self.allowed_cidrs.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        Err(format!(
            "{ip} is a {class} address: refused unless the policy lists its range in allowed_cidrs"
        ))
    }
}

/// An IPv4 address written as IPv6 (`::ffff:10.0.0.1`) is checked as the IPv4 address.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn is_metadata(ip: IpAddr) -> bool {
    const AWS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    match ip {
        // AWS, GCP, Azure, OpenStack, DigitalOcean…; Alibaba's 100.100.100.200.
        IpAddr::V4(v4) => {
            v4 == Ipv4Addr::new(169, 254, 169, 254) || v4 == Ipv4Addr::new(100, 100, 100, 200)
        }
        IpAddr::V6(v6) => v6 == AWS_V6,
    }
}

/// The kind of address that is not on the public internet, if it is one.
fn special_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("carrier-grade NAT")
            } else if v4.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else if v4.is_multicast() || v4.is_broadcast() || o[0] >= 240 {
                Some("multicast or reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("private (unique local)")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast or reserved")
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(p: &str, ports: Option<Vec<u16>>, d: Decision, id: &str) -> HostRule {
        HostRule {
            pattern: HostPattern::parse(p).unwrap(),
            ports,
            decision: d,
            id: id.into(),
        }
    }

    fn rules() -> EgressRules {
        EgressRules {
            hosts: vec![
                rule("pypi.org", Some(vec![443]), Decision::Allow, "r0"),
                rule("*.pythonhosted.org", None, Decision::Allow, "r1"),
                rule("evil.pythonhosted.org", None, Decision::Deny, "r2"),
                rule("*.example.com", None, Decision::Ask, "r3"),
            ],
            default: Decision::Deny,
            default_id: "defaults.network.default".into(),
            allowed_cidrs: vec!["10.1.0.0/16".parse().unwrap()],
        }
    }

    #[test]
    fn hosts_match_exactly_or_below_a_domain_and_the_strictest_wins() {
        let r = rules();
        let d = |h: &str, p: u16| r.decide(h, p);
        assert_eq!(d("pypi.org", 443), (Decision::Allow, "r0".into()));
        assert_eq!(d("pypi.org", 80).0, Decision::Deny, "another port");
        assert_eq!(
            d("files.pythonhosted.org", 443),
            (Decision::Allow, "r1".into())
        );
        assert_eq!(
            d("pythonhosted.org", 443).0,
            Decision::Deny,
            "*. is below, not the domain"
        );
        assert_eq!(
            d("xpythonhosted.org", 443).0,
            Decision::Deny,
            "a label boundary"
        );
        assert_eq!(
            d("evil.pythonhosted.org", 443),
            (Decision::Deny, "r2".into())
        );
        assert_eq!(d("a.b.example.com", 8080), (Decision::Ask, "r3".into()));
        assert_eq!(
            d("unlisted.net", 443),
            (Decision::Deny, "defaults.network.default".into())
        );
    }

    #[test]
    fn names_are_normalised_and_nonsense_is_not_a_name() {
        assert_eq!(normalize_host("PyPI.org."), Some("pypi.org".into()));
        assert_eq!(normalize_host("[::1]"), Some("::1".into()));
        assert_eq!(normalize_host("a b"), None);
        assert_eq!(normalize_host(""), None);
        assert_eq!(normalize_host("-x.com"), None);
        assert!(HostPattern::parse("*.").is_none());
        assert!(HostPattern::parse("a.*.com").is_none());
    }

    #[test]
    fn special_addresses_are_refused_unless_listed_and_metadata_always() {
        let r = rules();
        let ok = |s: &str| r.check_address(s.parse().unwrap());
        assert!(ok("151.101.0.223").is_ok());
        assert!(ok("2a04:4e42::223").is_ok());
        for bad in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:192.168.0.1",
        ] {
            assert!(ok(bad).is_err(), "{bad} is refused");
        }
        assert!(ok("10.1.2.3").is_ok(), "a listed range");
        assert!(ok("::ffff:10.1.2.3").is_ok(), "mapped into a listed range");
        let meta = EgressRules {
            allowed_cidrs: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
            ..rules()
        };
        for m in [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
            "100.100.100.200",
        ] {
            let e = meta.check_address(m.parse().unwrap()).unwrap_err();
            assert!(e.contains("metadata"), "{m}: {e}");
        }
    }
}
