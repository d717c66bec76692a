//! The client's address of a request: the TCP peer, or, when the peer is a trusted proxy
//! (`--trusted-proxies`), the right-most address of `X-Forwarded-For` that is not itself a
//! trusted proxy. Entries left of that one were written by the client and prove nothing; an
//! entry that is not an address ends the walk (the hop right of it is the last one vouched for).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use ipnet::IpNet;

use super::Shared;
use super::connections::is_trusted;
use super::rest::RestError;
use crate::limits::FORWARDED_HOPS_MAX;

/// The address a request came from, as the limits count it.
pub struct ClientAddr(pub IpAddr);

impl FromRequestParts<Shared> for ClientAddr {
    type Rejection = RestError;

    async fn from_request_parts(
        parts: &mut Parts,
        shared: &Shared,
    ) -> Result<Self, Self::Rejection> {
        // Every connection is served by `connections::serve`, which records its peer.
        let ConnectInfo(peer) = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .copied()
            .ok_or_else(|| {
                RestError::new(StatusCode::INTERNAL_SERVER_ERROR, "Client address unknown")
            })?;
        Ok(ClientAddr(client_address(
            peer.ip(),
            &parts.headers,
            &shared.trusted_proxies,
        )))
    }
}

pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(trusted_proxies, peer) {
        return peer;
    }
    // Several header lines are one list in order (RFC 9110 §5.3); read it from the right.
    let lines: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    let hops = lines
        .iter()
        .rev()
        .flat_map(|line| line.rsplit(','))
        .take(FORWARDED_HOPS_MAX);
    let mut client = peer;
    for hop in hops {
        let Some(address) = parse_hop(hop) else {
            break;
        };
        client = address;
        if !is_trusted(trusted_proxies, address) {
            break;
        }
    }
    client
}

/// `192.0.2.1`, `2001:db8::1`, or either with a port (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn forwarded(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append("x-forwarded-for", line.parse().unwrap());
        }
        headers
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let headers = forwarded(&["198.51.100.7"]);
        assert_eq!(
            client_address(ip("192.0.2.1"), &headers, &nets(&["10.0.0.0/8"])),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8"]);
        let headers = forwarded(&["203.0.113.9, 198.51.100.7", "10.0.0.2"]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &headers, &trusted),
            ip("198.51.100.7"),
            "203.0.113.9 was written by the client and proves nothing"
        );
    }

    #[test]
    fn without_a_usable_hop_the_last_vouched_address_stands() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
        let headers = forwarded(&["nonsense, 10.0.0.5"]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &headers, &trusted),
            ip("10.0.0.5")
        );
        let headers = forwarded(&["[2001:db8::1]:4711"]);
        assert_eq!(
            client_address(ip("::ffff:10.0.0.1"), &headers, &trusted),
            ip("2001:db8::1")
        );
    }
}
