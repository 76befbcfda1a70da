//! Turns c10d's error messages into errors a user can act on: which rank is gone, or that a
//! peer did not join in time.
//!
//! Gloo names a dead peer only by the far end of the broken connection ("Connection closed by
//! peer [10.0.0.2]:41234", "Read error [10.0.0.2]:41234: Connection reset by peer"). Each rank
//! publishes the local addresses of its Gloo sockets when the group is made (see `group.rs`), so
//! that address maps back to a rank. A peer that is alive but never joins shows as "Timed out
//! waiting ...ms for recv operation to complete".
use std::time::Duration;

/// The error for collective `op` that failed with c10d's `message`. `peers[r]` is rank r's Gloo
/// socket addresses, space-separated ("" when unknown); `rank` is this process's own.
pub(crate) fn collective_error(
    op: &str,
    message: &str,
    peers: &[String],
    rank: usize,
    timeout: Duration,
) -> anyhow::Error {
    let lower = message.to_ascii_lowercase();
    let gone = [
        "closed by peer",
        "reset by peer",
        "broken pipe",
        "connection refused",
    ]
    .iter()
    .any(|s| lower.contains(s));
    if gone {
        let who = match gone_ranks(message, peers, rank).as_slice() {
            [] => "a peer rank is gone".to_owned(),
            [r] => format!("rank {r} is gone"),
            ranks => format!("ranks {ranks:?} are gone"),
        };
        anyhow::anyhow!(
            "{op} failed: {who} (connection closed; it crashed or was killed): {message}"
        )
    } else if lower.contains("timed out") || lower.contains("timeout") {
        anyhow::anyhow!(
            "{op} failed: timed out after {timeout:?} waiting for a peer rank (alive but not in \
             the collective, or stuck): {message}"
        )
    } else {
        anyhow::anyhow!("{op} failed: {message}")
    }
}

/// The ranks other than `rank` one of whose addresses appears in `message`.
fn gone_ranks(message: &str, peers: &[String], rank: usize) -> Vec<usize> {
    peers
        .iter()
        .enumerate()
        .filter(|&(r, addresses)| {
            r != rank && addresses.split_whitespace().any(|a| mentions(message, a))
        })
        .map(|(r, _)| r)
        .collect()
}

/// Whether `message` holds `address` ("[ip]:port") not followed by another digit of a port.
/// The port may also appear byte-swapped: Gloo (as built in torch 2.13) prints a peer's port in
/// network byte order ("[127.0.0.1]:22417" for port 37207).
fn mentions(message: &str, address: &str) -> bool {
    let swapped = address.rsplit_once(':').and_then(|(host, port)| {
        Some(format!("{host}:{}", port.parse::<u16>().ok()?.swap_bytes()))
    });
    [Some(address.to_owned()), swapped]
        .into_iter()
        .flatten()
        .any(|spelling| {
            message.match_indices(&spelling).any(|(at, _)| {
                !message[at + spelling.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit())
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> Vec<String> {
        [
            "[127.0.0.1]:4000 [127.0.0.1]:4001",
            "[127.0.0.1]:400",
            "[10.0.0.2]:5000",
            "",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn a_closed_connection_names_the_rank_by_its_address() {
        let message = "[pair.cc:553] Connection closed by peer [127.0.0.1]:400. This is typically caused by a remote worker crashing.";
        let err = collective_error("all_reduce", message, &peers(), 2, Duration::from_secs(60));
        let text = err.to_string();
        assert!(
            text.starts_with("all_reduce failed: rank 1 is gone"),
            "{text}"
        );
        assert!(text.contains(message), "{text}");
    }

    #[test]
    fn an_unknown_address_still_says_a_peer_is_gone() {
        let message = "Read error [127.0.0.1]:4001: Connection reset by peer";
        let text =
            collective_error("barrier", message, &peers(), 3, Duration::from_secs(1)).to_string();
        assert!(text.contains("rank 0 is gone (connection closed"), "{text}");
        // Port 37207 as Gloo prints it, byte-swapped.
        let swapped = vec!["[127.0.0.1]:37207".to_owned(), "[127.0.0.1]:1".to_owned()];
        let message = "Connection closed by peer [127.0.0.1]:22417. This is typically";
        let text =
            collective_error("barrier", message, &swapped, 1, Duration::from_secs(1)).to_string();
        assert!(text.contains("rank 0 is gone"), "{text}");
        let message = "Read error [10.9.9.9]:1: Connection reset by peer";
        let text =
            collective_error("barrier", message, &peers(), 0, Duration::from_secs(1)).to_string();
        assert!(
            text.contains("a peer rank is gone (connection closed"),
            "{text}"
        );
    }

    #[test]
    fn a_timeout_says_so() {
        let message = "Timed out waiting 3000ms for recv operation to complete";
        let text =
            collective_error("broadcast", message, &peers(), 0, Duration::from_secs(3)).to_string();
        assert!(
            text.contains("timed out after 3s waiting for a peer rank"),
            "{text}"
        );
    }
}
