//! Network addresses as the gateway reasons about them: an [`IpNet`] (`trusted_proxies`) and
//! the [`client_network`] one client is counted under (per-client connection caps, audit
//! aggregation).
//!
//! A leaf: it names no other module of the crate, so the config that parses these, the server
//! that caps connections, the pipeline that trusts proxies and the audit trail that aggregates
//! refusals can all use it without using each other.

use std::net::IpAddr;

/// The address one client is counted under, for per-client limits and aggregation: IPv4 as is
/// (IPv4-mapped IPv6 too), IPv6 by its /64, the block one subscriber usually holds whole
/// (counting single IPv6 addresses would let one client be 2^64 clients).
pub fn client_network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// Why a text is not an [`IpNet`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpNetError {
    /// The address part is not an IPv4 or IPv6 address (host names are not resolved).
    #[error("`{0}` is not an IP address or CIDR")]
    NotAnAddress(String),
    /// The prefix length is not a number up to the address family's bit count.
    #[error("`{text}` has a prefix length outside 0..={max}")]
    Prefix {
        /// The text as written.
        text: String,
        /// 32 for IPv4, 128 for IPv6.
        max: u8,
    },
}

/// An IP network: `10.0.0.0/8`, `::1/128`, or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses CIDR notation or a bare address.
    pub fn parse(text: &str) -> Result<Self, IpNetError> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| IpNetError::NotAnAddress(text.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| IpNetError::Prefix {
                    text: text.to_owned(),
                    max,
                })?,
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` lies inside this network. IPv4-mapped IPv6 addresses match IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let key = |s: &str| client_network(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff::9"));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2::"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_eq!(key("192.0.2.1"), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn cidr_matching_respects_the_prefix_and_mapped_addresses() {
        let net = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one = IpNet::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(
            IpNet::parse("::/0")
                .unwrap()
                .contains("2001:db8::1".parse().unwrap())
        );
        assert!(IpNet::parse("10.0.0.0/33").is_err());
    }

    #[test]
    fn a_bad_network_says_which_part_is_wrong() {
        assert_eq!(
            IpNet::parse("gateway.internal"),
            Err(IpNetError::NotAnAddress("gateway.internal".into()))
        );
        assert_eq!(
            IpNet::parse("::1/129"),
            Err(IpNetError::Prefix {
                text: "::1/129".into(),
                max: 128
            })
        );
        assert_eq!(
            IpNet::parse("10.0.0.0/33").unwrap_err().to_string(),
            "`10.0.0.0/33` has a prefix length outside 0..=32"
        );
    }
}
