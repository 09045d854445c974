//! Response bodies: a complete buffer, or the event stream of a watch.
//!
//! A watch body owns its watcher: when hyper drops the body (response finished, client gone,
//! connection closed) the watcher is removed from the store's hub, so abandoned watches do not
//! accumulate.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use oxcd_api::v2::Event;
use tokio::sync::{mpsc, oneshot};

use crate::server::{Shared, STORE_KEYS_PREFIX};

/// The body of every response oxcd sends.
pub enum RespBody {
    /// A complete body (possibly empty), sent once.
    Full(Option<Bytes>),
    /// Events of a watch, each a JSON line.
    Watch(Box<WatchBody>),
}

impl RespBody {
    /// A complete body.
    pub fn full(b: impl Into<Bytes>) -> Self {
        RespBody::Full(Some(b.into()))
    }

    /// No body.
    pub fn empty() -> Self {
        RespBody::Full(None)
    }
}

/// Streams a watcher's events.
pub struct WatchBody {
    /// An event to send before reading the channel (found in the history).
    pub first: Option<Arc<Event>>,
    /// Events pushed by the store's watcher hub.
    pub rx: Option<EventRx>,
    /// `stream=true`: keep going after the first event.
    pub stream: bool,
    /// Registration to remove on drop.
    pub watcher: Option<(Arc<Shared>, oxcd_v2store::WatcherId)>,
    /// Finished (non-stream watch delivered its event).
    pub done: bool,
}

/// Where a registered watcher's events arrive.
pub enum EventRx {
    /// `stream=true`: every event, in order.
    Stream(mpsc::Receiver<Arc<Event>>),
    /// A one-event watch (the usual long poll): a oneshot is one small allocation where a
    /// bounded channel is an aligned block of slots per request.
    Once(oneshot::Receiver<Arc<Event>>),
}

impl EventRx {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arc<Event>>> {
        match self {
            EventRx::Stream(rx) => rx.poll_recv(cx),
            EventRx::Once(rx) => Pin::new(rx).poll(cx).map(Result::ok),
        }
    }
}

/// Encoded events kept per worker thread, by index modulo this.
const ENCODED_CACHE: usize = 64;

fn encode_event(ev: &Arc<Event>) -> Bytes {
    // One write wakes every watcher of the key with the same `Arc<Event>`, and watchers
    // catching up from the history ask for the recent ones again: each worker thread keeps
    // the last events it encoded, by index, and hands out the same bytes. An entry holds its
    // Arc, so the address compared cannot be reused by another event while it is cached.
    type Slot = Option<(Arc<Event>, Bytes)>;
    thread_local! {
        static RECENT: std::cell::RefCell<Vec<Slot>> =
            std::cell::RefCell::new(vec![None; ENCODED_CACHE]);
    }
    RECENT.with(|recent| {
        let mut recent = recent.borrow_mut();
        let slot = &mut recent[(ev.index() % ENCODED_CACHE as u64) as usize];
        if let Some((cached, bytes)) = slot.as_ref() {
            if Arc::ptr_eq(cached, ev) {
                return bytes.clone();
            }
        }
        let mut trimmed = Event::clone(ev);
        trimmed.trim_prefix(STORE_KEYS_PREFIX);
        let bytes = super::keys::event_json_line(&trimmed);
        *slot = Some((Arc::clone(ev), bytes.clone()));
        bytes
    })
}

impl Drop for WatchBody {
    fn drop(&mut self) {
        if let Some((shared, id)) = self.watcher.take() {
            let mut store = shared.store.write().unwrap_or_else(|e| e.into_inner());
            store.remove_watcher(id);
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            RespBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Watch(w) => {
                if w.done {
                    return Poll::Ready(None);
                }
                if let Some(ev) = w.first.take() {
                    if !w.stream {
                        w.done = true;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(encode_event(&ev)))));
                }
                let Some(rx) = w.rx.as_mut() else {
                    // A stream watch answered from the history is not registered with the hub
                    // (etcd behaves the same): it stays open until the client leaves.
                    return Poll::Pending;
                };
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(ev)) => {
                        if !w.stream {
                            w.done = true;
                            // The hub drops a one-shot watcher when it delivers: nothing to
                            // remove on drop (saves a store write lock per delivery).
                            w.watcher = None;
                        }
                        Poll::Ready(Some(Ok(Frame::data(encode_event(&ev)))))
                    }
                    Poll::Ready(None) => {
                        w.done = true;
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Full(b) => b.is_none(),
            RespBody::Watch(w) => w.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RespBody::Full(None) => SizeHint::with_exact(0),
            RespBody::Watch(_) => SizeHint::default(),
        }
    }
}

/// The store's watcher hub pushes into this channel; a full buffer (a client that does not
/// read) makes the hub drop the watcher, as etcd does.
pub struct ChannelSink(pub mpsc::Sender<Arc<Event>>);

impl oxcd_v2store::WatchSink for ChannelSink {
    fn try_send(&self, event: Arc<Event>) -> bool {
        self.0.try_send(event).is_ok()
    }
}

/// The sink of a one-event watch: the hub delivers once and drops the watcher.
pub struct OnceSink(pub std::sync::Mutex<Option<oneshot::Sender<Arc<Event>>>>);

impl oxcd_v2store::WatchSink for OnceSink {
    fn try_send(&self, event: Arc<Event>) -> bool {
        let sender = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        sender.is_some_and(|tx| tx.send(event).is_ok())
    }
}
