//! Outbound events, as the appliance sends them: each recipient gets every event as
//! a form POST, strictly in order; the head event is sent again (after the retry
//! interval) until it gets a 200, and nothing behind it goes before.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;

use crate::common::lock;

#[derive(Debug, Clone, Default, Serialize)]
pub struct RecipientReport {
    pub url: String,
    /// Events that got a 200.
    pub delivered: u64,
    /// POSTs made, refused ones included.
    pub attempts: u64,
    /// Events waiting (the head included).
    pub queued: usize,
    /// The last answer that was not a 200.
    pub last_refusal: Option<String>,
}

struct Recipient {
    queue: Mutex<VecDeque<Vec<(String, String)>>>,
    report: Mutex<RecipientReport>,
    wake: Notify,
}

#[derive(Clone)]
pub struct Delivery {
    recipients: Arc<Mutex<Vec<Arc<Recipient>>>>,
    retry_interval: Duration,
}

impl Delivery {
    pub fn new(retry_interval: Duration) -> Self {
        Self {
            recipients: Arc::new(Mutex::new(Vec::new())),
            retry_interval,
        }
    }

    pub fn add_recipient(&self, url: &str) {
        let recipient = Arc::new(Recipient {
            queue: Mutex::new(VecDeque::new()),
            report: Mutex::new(RecipientReport {
                url: url.to_owned(),
                ..RecipientReport::default()
            }),
            wake: Notify::new(),
        });
        lock(&self.recipients).push(Arc::clone(&recipient));
        let url = url.to_owned();
        let interval = self.retry_interval;
        tokio::spawn(async move {
            // The appliance closes each connection after a call.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default();
            loop {
                let head = lock(&recipient.queue).front().cloned();
                let Some(form) = head else {
                    recipient.wake.notified().await;
                    continue;
                };
                let answer = client.post(&url).form(&form).send().await;
                let refusal = match answer {
                    Ok(r) if r.status().as_u16() == 200 => None,
                    Ok(r) => Some(format!("HTTP {}", r.status().as_u16())),
                    Err(e) => Some(e.to_string()),
                };
                {
                    let mut report = lock(&recipient.report);
                    report.attempts += 1;
                    if refusal.is_none() {
                        report.delivered += 1;
                    } else {
                        report.last_refusal = refusal.clone();
                    }
                }
                if refusal.is_none() {
                    lock(&recipient.queue).pop_front();
                } else {
                    tokio::time::sleep(interval).await;
                }
            }
        });
    }

    /// Queues an event for every recipient.
    pub fn send(&self, form: Vec<(String, String)>) {
        for r in lock(&self.recipients).iter() {
            lock(&r.queue).push_back(form.clone());
            r.wake.notify_one();
        }
    }

    pub fn report(&self) -> Vec<RecipientReport> {
        lock(&self.recipients)
            .iter()
            .map(|r| {
                let mut report = lock(&r.report).clone();
                report.queued = lock(&r.queue).len();
                report
            })
            .collect()
    }
}
