//! A small authoritative DNS server on 127.0.0.1 (UDP) for discovery tests: A, AAAA and SRV records that a
//! test changes while Portico runs, and a switch that makes it stop answering (queries are read and dropped, as
//! from a dead server). Written for the tests so they need no root, no package and no daemon.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::UdpSocket;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_SRV: u16 = 33;

/// One SRV record.
#[derive(Clone, Debug)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

#[derive(Default)]
struct Zone {
    addresses: HashMap<String, Vec<IpAddr>>,
    srv: HashMap<String, Vec<Srv>>,
}

/// The server; it stops when dropped.
pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    silent: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsServer {
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind test DNS server");
        let addr = socket.local_addr().expect("local addr");
        let zone: Arc<Mutex<Zone>> = Arc::default();
        let silent = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let (z, s, q) = (zone.clone(), silent.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else { continue };
                q.fetch_add(1, Ordering::SeqCst);
                if s.load(Ordering::SeqCst) {
                    continue;
                }
                let reply = answer(&buf[..n], &z.lock());
                if let Some(reply) = reply {
                    let _ = socket.send_to(&reply, peer).await;
                }
            }
        });
        DnsServer { addr, zone, silent, queries, task }
    }

    /// The A and AAAA records of `name` (replacing what it had; empty: the name does not exist).
    pub fn set_addresses(&self, name: &str, addresses: &[IpAddr]) {
        self.zone.lock().addresses.insert(key(name), addresses.to_vec());
    }

    /// The SRV records of `name`.
    pub fn set_srv(&self, name: &str, records: &[Srv]) {
        self.zone.lock().srv.insert(key(name), records.to_vec());
    }

    /// Stops answering (true) or answers again (false).
    pub fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::SeqCst);
    }

    /// Queries received so far (answered or not).
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

/// The reply to one query, or `None` for a packet that is not one.
fn answer(query: &[u8], zone: &Zone) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let (name, end) = read_name(query, 12)?;
    let question_end = end + 4;
    let qtype = u16::from_be_bytes([*query.get(end)?, *query.get(end + 1)?]);
    let key = key(&name);
    let known = zone.addresses.get(&key).is_some_and(|a| !a.is_empty()) || zone.srv.contains_key(&key);
    let mut records: Vec<(u16, Vec<u8>)> = Vec::new();
    match qtype {
        TYPE_A | TYPE_AAAA => {
            for ip in zone.addresses.get(&key).into_iter().flatten() {
                match (ip, qtype) {
                    (IpAddr::V4(v4), TYPE_A) => records.push((TYPE_A, v4.octets().to_vec())),
                    (IpAddr::V6(v6), TYPE_AAAA) => records.push((TYPE_AAAA, v6.octets().to_vec())),
                    _ => {}
                }
            }
        }
        TYPE_SRV => {
            for srv in zone.srv.get(&key).into_iter().flatten() {
                let mut data = Vec::new();
                data.extend_from_slice(&srv.priority.to_be_bytes());
                data.extend_from_slice(&srv.weight.to_be_bytes());
                data.extend_from_slice(&srv.port.to_be_bytes());
                write_name(&mut data, &srv.target);
                records.push((TYPE_SRV, data));
            }
        }
        _ => {}
    }
    let mut reply = Vec::with_capacity(512);
    reply.extend_from_slice(&query[0..2]);
    // QR, the query's opcode and RD, AA; RA; NXDOMAIN for a name the zone does not have.
    reply.push(0x84 | (query[2] & 0x79));
    reply.push(if known { 0x80 } else { 0x83 });
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&(records.len() as u16).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(query.get(12..question_end)?);
    for (rtype, data) in records {
        reply.extend_from_slice(&[0xC0, 0x0C]);
        reply.extend_from_slice(&rtype.to_be_bytes());
        reply.extend_from_slice(&1u16.to_be_bytes());
        reply.extend_from_slice(&0u32.to_be_bytes());
        reply.extend_from_slice(&(data.len() as u16).to_be_bytes());
        reply.extend_from_slice(&data);
    }
    Some(reply)
}

/// Reads an uncompressed name at `at`; returns it and the offset after it.
fn read_name(packet: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    loop {
        let len = *packet.get(at)? as usize;
        at += 1;
        if len == 0 {
            return Some((labels.join("."), at));
        }
        if len & 0xC0 != 0 {
            return None;
        }
        labels.push(String::from_utf8_lossy(packet.get(at..at + len)?).into_owned());
        at += len;
    }
}

fn write_name(out: &mut Vec<u8>, name: &str) {
    for label in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}
