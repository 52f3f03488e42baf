//! The SSRF guard: which addresses a webhook may be delivered to.
//!
//! sluice serves many organisations, and an admin of any of them registers webhook URLs. Without
//! a guard, such a URL could aim the server's own requests at itself (`127.0.0.1`), at the cloud
//! metadata service (`169.254.169.254`), or at anything else on the private network beside it.
//! So by default only public unicast addresses are allowed, checked three times:
//!
//! - at registration ([`check_destination`]): an IP-literal host that is not allowed is refused,
//!   and a host name is resolved and refused when every address it has is disallowed;
//! - at delivery, by the HTTP client's resolver ([`GuardedResolver`]), which drops disallowed
//!   addresses from every lookup, so a name that resolved to a public address at registration
//!   and to `127.0.0.1` now (DNS rebinding) reaches nothing;
//! - at delivery, for IP-literal URLs (which are never resolved) and redirects
//!   ([`literal_allowed`], [`redirect_policy`]).
//!
//! `sluice serve --webhook-allow-private` turns all of it off, for single-tenant deployments
//! whose receivers run beside sluice.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// How long registration waits for a host name to resolve.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Why an address may not receive webhooks; `None` from [`classify`]: it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unspecified,
    Loopback,
    Private,
    LinkLocal,
    SharedCgnat,
    Multicast,
    Broadcast,
    Documentation,
    Benchmarking,
    Reserved,
}

impl Refusal {
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::Unspecified => "an unspecified address",
            Refusal::Loopback => "a loopback address",
            Refusal::Private => "a private-network address",
            Refusal::LinkLocal => "a link-local address (this includes cloud metadata services)",
            Refusal::SharedCgnat => "a carrier-grade NAT address",
            Refusal::Multicast => "a multicast address",
            Refusal::Broadcast => "a broadcast address",
            Refusal::Documentation => "a documentation address",
            Refusal::Benchmarking => "a benchmarking address",
            Refusal::Reserved => "a reserved address",
        }
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    u128::from(ip) & mask == u128::from(net) & mask
}

fn classify_v4(ip: Ipv4Addr) -> Option<Refusal> {
    const RANGES: &[([u8; 4], u32, Refusal)] = &[
        ([0, 0, 0, 0], 32, Refusal::Unspecified),
        ([0, 0, 0, 0], 8, Refusal::Reserved), // "this network"
        ([10, 0, 0, 0], 8, Refusal::Private),
        ([100, 64, 0, 0], 10, Refusal::SharedCgnat),
        ([127, 0, 0, 0], 8, Refusal::Loopback),
        ([169, 254, 0, 0], 16, Refusal::LinkLocal),
        ([172, 16, 0, 0], 12, Refusal::Private),
        ([192, 0, 0, 0], 24, Refusal::Reserved), // IETF protocol assignments
        ([192, 0, 2, 0], 24, Refusal::Documentation),
        ([192, 88, 99, 0], 24, Refusal::Reserved), // former 6to4 relay anycast
        ([192, 168, 0, 0], 16, Refusal::Private),
        ([198, 18, 0, 0], 15, Refusal::Benchmarking),
        ([198, 51, 100, 0], 24, Refusal::Documentation),
        ([203, 0, 113, 0], 24, Refusal::Documentation),
        ([224, 0, 0, 0], 4, Refusal::Multicast),
        ([255, 255, 255, 255], 32, Refusal::Broadcast),
        ([240, 0, 0, 0], 4, Refusal::Reserved),
    ];
    RANGES
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, why)| *why)
}

fn classify_v6(ip: Ipv6Addr) -> Option<Refusal> {
    // Forms that carry an IPv4 address: judged by that address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4); // ::ffff:a.b.c.d
    }
    let bits = u128::from(ip);
    if ip.is_unspecified() {
        return Some(Refusal::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Refusal::Loopback);
    }
    let embedded = |shift: u32| Ipv4Addr::from((bits >> shift) as u32);
    if in_v6(ip, Ipv6Addr::UNSPECIFIED, 96) {
        // ::a.b.c.d, the deprecated IPv4-compatible form.
        return classify_v4(embedded(0)).or(Some(Refusal::Reserved));
    }
    if in_v6(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        // NAT64: the gateway would forward to the embedded IPv4 address.
        return classify_v4(embedded(0));
    }
    if in_v6(ip, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        // 6to4: the embedded IPv4 address is bits 16..48.
        return classify_v4(embedded(80));
    }
    let ranges: &[(Ipv6Addr, u32, Refusal)] = &[
        (
            Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
            48,
            Refusal::Private,
        ), // local-use NAT64
        (
            Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
            64,
            Refusal::Reserved,
        ), // discard-only
        (
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
            32,
            Refusal::Documentation,
        ),
        (
            Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 0),
            48,
            Refusal::Benchmarking,
        ),
        (
            Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
            32,
            Refusal::Reserved,
        ), // Teredo: a tunnel to an IPv4 host hidden (XORed) in the address
        (
            Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
            7,
            Refusal::Private,
        ), // unique local
        (
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
            10,
            Refusal::LinkLocal,
        ),
        (
            Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
            10,
            Refusal::Private,
        ), // old site-local
        (
            Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
            8,
            Refusal::Multicast,
        ),
    ];
    ranges
        .iter()
        .find(|(net, prefix, _)| in_v6(ip, *net, *prefix))
        .map(|(_, _, why)| *why)
}

/// Why webhooks may not go to `ip`; `None` if they may (a public unicast address).
pub fn classify(ip: IpAddr) -> Option<Refusal> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

pub fn is_allowed(ip: IpAddr) -> bool {
    classify(ip).is_none()
}

/// Why a webhook URL's destination is refused at registration.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error(
        "webhooks may not be delivered to {}; use a public address (a server started with --webhook-allow-private allows private ones)",
        .0.describe()
    )]
    Address(Refusal),
    #[error(
        "`{0}` resolves only to private, loopback or otherwise internal addresses; webhooks may not be delivered there (a server started with --webhook-allow-private allows it)"
    )]
    Name(String),
}

/// The host of an `http://` URL as an address, if it is an IP literal.
pub fn literal(url: &Url) -> Option<IpAddr> {
    // The URL parser has already turned every IPv4 spelling (`2130706433`, `0x7f.1`, octal)
    // into dotted decimal, and IPv6 hosts come in brackets.
    let host = url.host_str()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.parse().ok()
}

/// Whether a URL may be sent to as far as its IP-literal host goes (host names are left to
/// the resolver).
pub fn literal_allowed(url: &Url) -> bool {
    literal(url).is_none_or(is_allowed)
}

/// The registration check of a webhook's destination: an IP literal must be allowed; a host
/// name must resolve to at least one allowed address (a name that does not resolve now is
/// accepted: delivery checks every lookup again anyway).
pub async fn check_destination(url: &Url) -> Result<(), DestinationError> {
    if let Some(ip) = literal(url) {
        return classify(ip).map_or(Ok(()), |why| Err(DestinationError::Address(why)));
    }
    let Some(host) = url.host_str() else {
        return Ok(());
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let lookup = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, port))).await;
    let Ok(Ok(addrs)) = lookup else {
        return Ok(());
    };
    let addrs: Vec<SocketAddr> = addrs.collect();
    if !addrs.is_empty() && !addrs.iter().any(|a| is_allowed(a.ip())) {
        return Err(DestinationError::Name(host.to_string()));
    }
    Ok(())
}

/// The error a lookup ends with when every address of the name was dropped.
#[derive(Debug, thiserror::Error)]
#[error("the receiver's address is not allowed")]
pub struct Refused;

/// Whether a delivery failed because the guard refused its destination.
pub fn is_refusal(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<Refused>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The webhook client's resolver: the system's (`getaddrinfo`, through tokio), with every
/// disallowed address removed; a name left with none fails with [`Refused`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> =
                found.into_iter().filter(|a| is_allowed(a.ip())).collect();
            if allowed.is_empty() {
                tracing::info!(host = %host, "webhook host resolves to no allowed address");
                return Err(Box::new(Refused) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Redirects are followed (at most 5) only to URLs whose IP-literal host is allowed; host
/// names go through [`GuardedResolver`] like the first request.
pub fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() >= 5 {
            attempt.error("too many redirects")
        } else if literal_allowed(attempt.url()) {
            attempt.follow()
        } else {
            attempt.error(Refused)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str) -> Option<Refusal> {
        classify(s.parse().unwrap_or_else(|_| panic!("{s}")))
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.1.1",
            "169.253.255.255",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(refused(ip), None, "{ip}");
        }
    }

    #[test]
    fn internal_ipv4_addresses_are_refused() {
        use Refusal::*;
        for (ip, why) in [
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Reserved),
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("10.0.0.1", Private),
            ("10.255.255.255", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("169.254.169.254", LinkLocal),
            ("169.254.0.1", LinkLocal),
            ("100.64.0.1", SharedCgnat),
            ("100.127.255.255", SharedCgnat),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("255.255.255.255", Broadcast),
            ("240.0.0.1", Reserved),
            ("192.0.0.8", Reserved),
            ("192.0.2.10", Documentation),
            ("198.51.100.7", Documentation),
            ("203.0.113.9", Documentation),
            ("198.18.0.1", Benchmarking),
            ("198.19.255.255", Benchmarking),
        ] {
            assert_eq!(refused(ip), Some(why), "{ip}");
        }
    }

    #[test]
    fn internal_ipv6_addresses_and_ipv4_in_ipv6_forms_are_refused() {
        use Refusal::*;
        for (ip, why) in [
            ("::", Unspecified),
            ("::1", Loopback),
            ("fc00::1", Private),
            ("fd12:3456:789a::1", Private),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fec0::1", Private),
            ("ff02::1", Multicast),
            ("2001:db8::1", Documentation),
            ("2001:2::1", Benchmarking),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Reserved), // Teredo
            ("100::1", Reserved),
            ("64:ff9b:1::1", Private),
            // IPv4-mapped forms of internal addresses.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::ffff:10.0.0.1", Private),
            ("::ffff:0.0.0.0", Unspecified),
            ("::ffff:7f00:1", Loopback),
            // IPv4-compatible, NAT64 and 6to4 forms.
            ("::127.0.0.1", Loopback),
            ("::8.8.8.8", Reserved),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("64:ff9b::7f00:1", Loopback),
            ("2002:7f00:1::1", Loopback),
            ("2002:a00:1::", Private),
        ] {
            assert_eq!(refused(ip), Some(why), "{ip}");
        }
    }

    #[test]
    fn literal_hosts_in_urls_are_normalised_before_the_check() {
        for url in [
            "http://127.0.0.1/",
            "http://2130706433/", // 127.0.0.1 as one number
            "http://0x7f.1/",     // hex and short forms
            "http://0177.0.0.1/", // octal
            "http://[::1]:8080/",
            "http://[::ffff:169.254.169.254]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/",
        ] {
            let u = Url::parse(url).unwrap();
            assert!(literal(&u).is_some(), "{url}");
            assert!(!literal_allowed(&u), "{url}");
        }
        assert!(literal_allowed(&Url::parse("http://8.8.8.8/").unwrap()));
        assert!(literal_allowed(&Url::parse("http://example.com/").unwrap()));
    }

    #[tokio::test]
    async fn registration_refuses_literals_and_names_that_resolve_only_inside() {
        let check = |u: &str| {
            let u = Url::parse(u).unwrap();
            async move { check_destination(&u).await }
        };
        assert!(matches!(
            check("http://169.254.169.254/").await,
            Err(DestinationError::Address(Refusal::LinkLocal))
        ));
        assert!(matches!(
            check("http://[::1]:9/").await,
            Err(DestinationError::Address(Refusal::Loopback))
        ));
        assert!(matches!(
            check("http://localhost:9/hook").await,
            Err(DestinationError::Name(_))
        ));
        assert!(check("http://8.8.8.8/").await.is_ok());
        // A name that does not resolve (the `.invalid` TLD never does) is left to delivery.
        assert!(check("http://nothing.invalid/").await.is_ok());
    }

    #[tokio::test]
    async fn the_resolver_drops_internal_addresses() {
        let err = GuardedResolver
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost has only loopback addresses");
        assert!(is_refusal(err.as_ref()));
    }
}
