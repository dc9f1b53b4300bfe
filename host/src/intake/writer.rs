//! Group commit: intake requests that arrive while a transaction is being written
//! are stored together in the next one, so durability (one fsync per commit) does not
//! cost one fsync per event.

use tokio::sync::{mpsc, oneshot};

use crate::store::events::{self, NewEvent, Routing, Stored};
use crate::store::{now_ms, Store};

/// Most events in one transaction.
const MAX_BATCH: usize = 512;

type Request = (NewEvent, Routing, oneshot::Sender<Result<Stored, String>>);

#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Request>,
}

impl Writer {
    pub fn start(store: Store) -> Self {
        let (queue, mut requests) = mpsc::channel::<Request>(4 * MAX_BATCH);
        tokio::spawn(async move {
            while let Some(first) = requests.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match requests.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
                let (work, replies): (Vec<(NewEvent, Routing)>, Vec<_>) = batch
                    .into_iter()
                    .map(|(event, routing, reply)| ((event, routing), reply))
                    .unzip();
                let result = store
                    .call(move |conn| events::insert_batch(conn, &work, now_ms()))
                    .await;
                match result {
                    Ok(stored) => {
                        for (reply, stored) in replies.into_iter().zip(stored) {
                            let _ = reply.send(Ok(stored));
                        }
                    }
                    Err(e) => {
                        tracing::error!("cannot store events: {e}");
                        for reply in replies {
                            let _ = reply.send(Err(e.to_string()));
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    /// Stores one event durably; returns once it is committed (or could not be).
    pub async fn store(&self, event: NewEvent, routing: Routing) -> Result<Stored, String> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((event, routing, reply))
            .await
            .map_err(|_| "the event writer has stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "the event writer has stopped".to_owned())?
    }
}
