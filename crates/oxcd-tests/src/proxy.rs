//! A fault-injecting proxy for peer traffic: partitions without network namespaces.
//!
//! Member `i` listens for peers on a private port and advertises the proxy's port `i`, so
//! every connection *to* member `i` passes through the proxy. The sender is named by the
//! `X-Server-From` header of the first request on the connection (every peer request
//! carries it), so the proxy knows both ends of each link. Isolating a member refuses new
//! connections from and to it and cuts the ones already open; healing lets them through
//! again. Threads and blocking sockets only: the harness stays free of async runtimes.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    /// Isolated members, by index.
    isolated: Mutex<HashSet<usize>>,
    /// Member ID (hex, as in `X-Server-From`) → index.
    ids: Mutex<HashMap<String, usize>>,
    /// Open links: (sender's ID as it said it, to, both sockets). IDs are resolved to indexes
    /// only when deciding, so links opened before `set_ids` are still cut.
    links: Mutex<Vec<(String, usize, TcpStream, TcpStream)>>,
    stop: AtomicBool,
}

impl State {
    fn index_of(&self, id: &str) -> Option<usize> {
        self.ids.lock().unwrap().get(id).copied()
    }

    fn blocked(&self, from: &str, to: usize) -> bool {
        let from = self.index_of(from);
        let iso = self.isolated.lock().unwrap();
        iso.contains(&to) || from.is_some_and(|f| iso.contains(&f))
    }
}

/// The proxy of a whole cluster: one listening port per member.
pub struct PeerProxy {
    state: Arc<State>,
    /// Ports the members advertise (the proxy listens there).
    pub ports: Vec<u16>,
}

impl PeerProxy {
    /// Starts listening on `ports[i]` and forwarding to `targets[i]` (the members' real peer
    /// ports).
    pub fn start(ports: &[u16], targets: &[u16]) -> PeerProxy {
        let state = Arc::new(State::default());
        for (to, (&port, &target)) in ports.iter().zip(targets).enumerate() {
            let listener = TcpListener::bind(("127.0.0.1", port)).expect("proxy port");
            let state = Arc::clone(&state);
            std::thread::spawn(move || accept_loop(listener, to, target, state));
        }
        PeerProxy {
            state,
            ports: ports.to_vec(),
        }
    }

    /// Tells the proxy which member ID each index has.
    pub fn set_ids(&self, ids: &[String]) {
        let mut m = self.state.ids.lock().unwrap();
        for (i, id) in ids.iter().enumerate() {
            m.insert(id.to_ascii_lowercase(), i);
        }
    }

    /// Cuts member `i` off from every other member.
    pub fn isolate(&self, i: usize) {
        self.state.isolated.lock().unwrap().insert(i);
        let mut links = self.state.links.lock().unwrap();
        links.retain(|(from, to, a, b)| {
            if self.state.index_of(from) == Some(i) || *to == i {
                let _ = a.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
                false
            } else {
                true
            }
        });
    }

    /// Lets every member reach every other again.
    pub fn heal(&self) {
        self.state.isolated.lock().unwrap().clear();
    }
}

impl Drop for PeerProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for p in &self.ports {
            let _ = TcpStream::connect(("127.0.0.1", *p));
        }
        for (_, _, a, b) in self.state.links.lock().unwrap().drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, to: usize, target: u16, state: Arc<State>) {
    for conn in listener.incoming() {
        if state.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        let state = Arc::clone(&state);
        std::thread::spawn(move || forward(conn, to, target, state));
    }
}

/// Reads up to the end of the first request's headers and returns them with the sender.
fn read_head(conn: &mut TcpStream) -> Option<(Vec<u8>, String)> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let from = text
        .lines()
        .find_map(|l| l.strip_prefix("x-server-from:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    Some((head, from))
}

fn forward(mut conn: TcpStream, to: usize, target: u16, state: Arc<State>) {
    let Some((head, from)) = read_head(&mut conn) else {
        return;
    };
    if state.blocked(&from, to) {
        let _ = conn.shutdown(Shutdown::Both);
        return;
    }
    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", target)) else {
        return;
    };
    let _ = upstream.set_nodelay(true);
    let _ = conn.set_nodelay(true);
    if upstream.write_all(&head).is_err() {
        return;
    }
    let (Ok(c2), Ok(u2)) = (conn.try_clone(), upstream.try_clone()) else {
        return;
    };
    if let (Ok(c3), Ok(u3)) = (conn.try_clone(), upstream.try_clone()) {
        state.links.lock().unwrap().push((from.clone(), to, c3, u3));
    }
    // The link may have been cut between the check and the registration.
    if state.blocked(&from, to) {
        let _ = conn.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
        return;
    }
    let back = std::thread::spawn(move || pipe(u2, c2));
    pipe(conn, upstream);
    let _ = back.join();
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
