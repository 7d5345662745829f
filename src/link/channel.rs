//! The in-process link: bounded channels between an embedded shard and its hub.
//!
//! [`pair`] makes both ends of one link. The shard's [`Uplink`] drops and counts *reports*
//! when the hub is behind ([`Uplink::report`]) and waits for room for what must arrive
//! ([`Uplink::send`]); the hub's [`HubEnd::commands`] sender always waits (a command is never
//! dropped). Dropping either end closes the link, which the other end sees as the peer gone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{HubCmd, ShardMsg};

/// Messages a shard may have in flight to its hub before reports are dropped.
pub const UPLINK_CAPACITY: usize = 1024;
/// Commands the hub may have in flight to a shard before it waits.
pub const COMMAND_CAPACITY: usize = 256;

/// The hub's end of one link.
pub struct HubEnd {
    pub commands: mpsc::Sender<HubCmd>,
    pub messages: mpsc::Receiver<ShardMsg>,
}

/// The shard's end of one link.
pub struct ShardEnd {
    pub commands: mpsc::Receiver<HubCmd>,
    pub up: Uplink,
}

/// Both ends of a new link.
pub fn pair() -> (HubEnd, ShardEnd) {
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CAPACITY);
    let (up_tx, up_rx) = mpsc::channel(UPLINK_CAPACITY);
    (
        HubEnd {
            commands: cmd_tx,
            messages: up_rx,
        },
        ShardEnd {
            commands: cmd_rx,
            up: Uplink {
                tx: up_tx,
                dropped: Arc::default(),
            },
        },
    )
}

/// The link is closed: the other end is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the link is closed")]
pub struct LinkClosed;

/// A shard's sending side. Cheap to clone; every clone shares the drop counter.
#[derive(Clone)]
pub struct Uplink {
    tx: mpsc::Sender<ShardMsg>,
    dropped: Arc<AtomicU64>,
}

impl Uplink {
    /// Sends a report if there is room now; otherwise drops it and counts it. Never waits.
    /// Returns whether it was sent.
    pub fn report(&self, msg: ShardMsg) -> bool {
        let sent = self.tx.try_send(msg).is_ok();
        if !sent {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// Sends a message that must arrive, waiting for room.
    pub async fn send(&self, msg: ShardMsg) -> Result<(), LinkClosed> {
        self.tx.send(msg).await.map_err(|_| LinkClosed)
    }

    /// Reports dropped because the hub was behind or gone.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_drop_and_count_when_the_hub_is_behind() {
        let (mut hub, shard) = pair();
        for _ in 0..UPLINK_CAPACITY + 10 {
            shard.up.report(ShardMsg::Drained);
        }
        assert_eq!(shard.up.dropped(), 10);
        assert!(hub.messages.recv().await.is_some());
        // Room again: a report goes through.
        assert!(shard.up.report(ShardMsg::Drained));
    }

    #[tokio::test]
    async fn commands_wait_for_room_instead_of_dropping() {
        let (hub, mut shard) = pair();
        for _ in 0..COMMAND_CAPACITY {
            hub.commands.try_send(HubCmd::Stop).unwrap();
        }
        let tx = hub.commands.clone();
        let waiting = tokio::spawn(async move { tx.send(HubCmd::Stop).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a full link makes the sender wait");
        shard.commands.recv().await.unwrap();
        waiting.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_dropped_end_closes_the_link() {
        let (hub, shard) = pair();
        drop(hub);
        assert_eq!(shard.up.send(ShardMsg::Drained).await, Err(LinkClosed));
        assert!(shard.up.is_closed());
    }
}
