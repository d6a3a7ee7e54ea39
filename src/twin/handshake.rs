//! The link handshake: Hello both ways, then Auth both ways
//! (docs/replication.md §6). Positions come after the supervisor kept the
//! link ([`super::session`]), and nothing else before both proofs verified.
//!
//! Every refusal is sent to the twin as a `Refuse` frame (so its log says why
//! too) and logged here with what an operator needs to fix it: the peer's
//! address, both protocol versions, the skew, the node id to change. Never
//! the secret or a proof.

use super::config::Secret;
use super::framed::{FrameReader, FrameWriter, IoError};
use super::stats::TwinStats;
use crate::protocol::twin::{auth_proof, verify_proof, Frame, RefuseReason, PROTOCOL_VERSION};
use crate::version::{now_ms, MAX_NODE_ID};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Skew above which the handshake warns (it refuses above the configured max).
pub const SKEW_WARN: Duration = Duration::from_secs(1);

/// This side of the handshake.
#[derive(Debug, Clone, Copy)]
pub struct Local<'a> {
    pub node: u16,
    pub history_id: u128,
    pub secret: &'a Secret,
    pub max_skew: Duration,
}

/// The twin, once authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub node: u16,
    pub history_id: u128,
    /// Twin's wall clock minus ours, at the Hello.
    pub skew_ms: i64,
}

/// Why no link came of a connection.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("expected {expected}, got another frame")]
    Unexpected { expected: &'static str },
    /// `log` is the operator-facing explanation (the wire message is shorter).
    #[error("{log}")]
    WeRefused { reason: RefuseReason, log: String },
    #[error("the twin refused the link ({reason:?}): {message}")]
    PeerRefused {
        reason: RefuseReason,
        message: String,
    },
    #[error("handshake timed out")]
    Timeout,
    #[error("no randomness for the challenge: {0}")]
    Random(std::io::Error),
}

impl HandshakeError {
    /// A refusal either way that an operator must fix (not "busy", which
    /// only means the other connection of a dial race was kept).
    pub fn is_refusal(&self) -> bool {
        match self {
            Self::WeRefused { reason, .. } | Self::PeerRefused { reason, .. } => {
                *reason != RefuseReason::Busy
            }
            _ => false,
        }
    }
}

/// 32 bytes from the kernel's CSPRNG.
pub fn random_nonce() -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    let mut n = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut n)?;
    Ok(n)
}

/// Tell the twin why (`message`), close, and return the refusal with the
/// operator's explanation (`log`).
pub async fn refuse<W: AsyncWrite + Unpin>(
    wr: &mut FrameWriter<W>,
    reason: RefuseReason,
    message: String,
    log: String,
) -> HandshakeError {
    let _ = wr.send(&Frame::Refuse { reason, message }).await;
    wr.shutdown().await;
    HandshakeError::WeRefused { reason, log }
}

/// Read one frame, turning a `Refuse` into an error.
async fn expect<R: AsyncRead + Unpin>(rd: &mut FrameReader<R>) -> Result<Frame, HandshakeError> {
    match rd.read().await? {
        Frame::Refuse { reason, message } => Err(HandshakeError::PeerRefused { reason, message }),
        f => Ok(f),
    }
}

/// The twin's clock minus ours, as small as the exchange allows. Both sides
/// send their Hello at once, so the twin stamped `peer_wall` at some moment
/// between our own Hello (`sent`) and its arrival (`now`): the offset lies in
/// `[peer_wall - now, peer_wall - sent]`, and the value of that interval
/// nearest to zero is returned. A handshake held up on the way (a congested
/// or paused network) then widens the interval instead of reading as skew;
/// on a healthy link it is a millisecond wide.
pub fn skew_bound(peer_wall: u64, sent: u64, now: u64) -> i64 {
    let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let lo = signed(peer_wall).saturating_sub(signed(now.max(sent)));
    let hi = signed(peer_wall).saturating_sub(signed(sent));
    if lo > 0 {
        lo
    } else if hi < 0 {
        hi
    } else {
        0
    }
}

/// Run Hello and Auth over a fresh connection to or from `peer_addr`. The
/// caller logs the error; its text says what to fix.
pub async fn handshake<R, W>(
    rd: &mut FrameReader<R>,
    wr: &mut FrameWriter<W>,
    local: Local<'_>,
    stats: &TwinStats,
    peer_addr: &str,
) -> Result<Peer, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let nonce = random_nonce().map_err(HandshakeError::Random)?;
    let sent_ms = now_ms();
    wr.send(&Frame::Hello {
        version: PROTOCOL_VERSION,
        node_id: local.node,
        history_id: local.history_id,
        wall_ms: sent_ms,
        nonce,
    })
    .await?;
    let Frame::Hello {
        version,
        node_id,
        history_id,
        wall_ms,
        nonce: peer_nonce,
    } = expect(rd).await?
    else {
        let log = format!("twin {peer_addr} did not open with a hello: connection closed");
        return Err(refuse(wr, RefuseReason::Other, "expected a hello".into(), log).await);
    };
    if version != PROTOCOL_VERSION {
        let log = format!(
            "twin {peer_addr} speaks replication protocol version {version}, this node speaks \
             {PROTOCOL_VERSION}: link refused; run the same memtwin release on both nodes"
        );
        let msg = format!(
            "protocol version {version} not supported, this node speaks {PROTOCOL_VERSION}"
        );
        return Err(refuse(wr, RefuseReason::Version, msg, log).await);
    }
    if node_id == local.node {
        let log = format!(
            "twin {peer_addr} has the same node id {node_id} as this node: link refused; set a \
             different --node-id (1-4095) on one of them"
        );
        let msg = format!("both nodes have node id {node_id}: set a different --node-id on one");
        return Err(refuse(wr, RefuseReason::SameNode, msg, log).await);
    }
    if node_id == 0 || node_id > MAX_NODE_ID {
        let log =
            format!("twin {peer_addr} presents node id {node_id}, out of 1-4095: link refused");
        let msg = format!("node id {node_id} out of range");
        return Err(refuse(wr, RefuseReason::Other, msg, log).await);
    }
    if peer_nonce == nonce {
        let log = format!("twin {peer_addr} echoed our challenge: link refused");
        return Err(refuse(wr, RefuseReason::AuthFailed, "challenge echoed".into(), log).await);
    }
    let skew_ms = skew_bound(wall_ms, sent_ms, now_ms());
    stats.clock_skew_ms.store(skew_ms, Ordering::Relaxed);
    let abs = skew_ms.unsigned_abs();
    let max_ms = u64::try_from(local.max_skew.as_millis()).unwrap_or(u64::MAX);
    if abs > max_ms {
        let log = format!(
            "clock of twin {peer_addr} differs from ours by {skew_ms} ms, above --max-clock-skew \
             {} s: link refused (absolute expiry times would disagree); fix NTP on both nodes",
            local.max_skew.as_secs()
        );
        let msg = format!("clocks differ by {skew_ms} ms, above the limit of {max_ms} ms");
        return Err(refuse(wr, RefuseReason::ClockSkew, msg, log).await);
    }
    if abs > SKEW_WARN.as_millis() as u64 {
        tracing::warn!("clock of twin {peer_addr} differs from ours by {skew_ms} ms: check NTP");
    }
    let proof = auth_proof(
        local.secret.bytes(),
        &nonce,
        &peer_nonce,
        local.node,
        node_id,
    );
    wr.send(&Frame::Auth { proof }).await?;
    let peer_proof = match expect(rd).await {
        Ok(Frame::Auth { proof }) => proof,
        Ok(_) => {
            let log = format!("twin {peer_addr} sent another frame instead of its proof");
            return Err(refuse(wr, RefuseReason::Other, "expected auth".into(), log).await);
        }
        Err(HandshakeError::PeerRefused {
            reason: RefuseReason::AuthFailed,
            message,
        }) => {
            stats.auth_failures.fetch_add(1, Ordering::Relaxed);
            return Err(HandshakeError::PeerRefused {
                reason: RefuseReason::AuthFailed,
                message: format!(
                    "{message}: twin {peer_addr} rejected our proof; check that \
                     --replication-secret names the same secret on both nodes"
                ),
            });
        }
        Err(e) => return Err(e),
    };
    if !verify_proof(
        local.secret.bytes(),
        &nonce,
        &peer_nonce,
        local.node,
        node_id,
        &peer_proof,
    ) {
        stats.auth_failures.fetch_add(1, Ordering::Relaxed);
        let log = format!(
            "twin {peer_addr} failed authentication (a different --replication-secret?): link refused"
        );
        return Err(refuse(
            wr,
            RefuseReason::AuthFailed,
            "authentication failed".into(),
            log,
        )
        .await);
    }
    Ok(Peer {
        node: node_id,
        history_id,
        skew_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_is_bounded_by_the_exchange() {
        // A healthy link: the interval is 2 ms wide.
        assert_eq!(skew_bound(10_000, 10_000, 10_002), 0);
        assert_eq!(skew_bound(16_000, 10_000, 10_002), 5_998);
        assert_eq!(skew_bound(4_000, 10_000, 10_002), -6_000);
        // A hello held 3 s on the way, stamped when the exchange began: no skew.
        assert_eq!(skew_bound(10_000, 10_000, 13_000), 0);
        // Held 3 s, and the twin behind: the part the delay cannot explain.
        assert_eq!(skew_bound(3_000, 10_000, 13_000), -7_000);
        assert_eq!(skew_bound(20_000, 10_000, 13_000), 7_000);
        assert_eq!(skew_bound(11_000, 10_000, 13_000), 0);
    }
}
