//! HTTP/2 control-frame floods: a client that sends frames which cost the server work and carry no request
//! (WINDOW_UPDATE, PRIORITY, SETTINGS, PING, over and over) is free to go on, as far as the h2 crate goes: it
//! bounds resets, CONTINUATION and empty DATA frames, not these. A probe kept one core ~90 % busy with
//! WINDOW_UPDATE or PRIORITY frames on one connection for as long as the connection lived.
//!
//! nginx's rule, kept: a connection whose bytes read are more than 8 times what they carried of requests
//! (HEADERS, CONTINUATION and DATA payloads), past a first 1 MiB, is a flood and is closed. One change: a
//! sixteenth of what Portico writes counts as carried too, since a client downloading a large answer sends
//! WINDOW_UPDATEs for it and nothing else (nginx would close a connection that downloaded ~80 GiB that way);
//! a PING or SETTINGS flood, answered byte for byte, still trips it.
//!
//! The watch reads only the 9-byte frame headers, where they fall in what hyper reads: a few comparisons a
//! frame, the payloads skipped over.

/// What a connection may read beyond eight times what it carried.
const ALLOWANCE: u64 = 1 << 20;
/// Bytes read per byte carried, at most.
const RATIO: u64 = 8;
/// A byte written counts as this fraction of a byte carried.
const WRITE_SHARE: u64 = 16;

const FRAME_HEADER: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;

/// Follows an HTTP/2 connection's frames from the end of the client preface.
#[derive(Debug)]
pub struct FloodWatch {
    /// Bytes of the preface still to come before the first frame.
    skip: usize,
    header: [u8; FRAME_HEADER],
    have: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    read: u64,
    carried: u64,
    written: u64,
}

impl FloodWatch {
    /// A watch that starts `preface_left` bytes before the first frame (the rest of the client preface).
    pub fn new(preface_left: usize) -> Self {
        FloodWatch {
            skip: preface_left,
            header: [0; FRAME_HEADER],
            have: 0,
            payload_left: 0,
            read: 0,
            carried: 0,
            written: 0,
        }
    }

    /// Follows `bytes` read from the client; true once the connection is a flood.
    pub fn read(&mut self, mut bytes: &[u8]) -> bool {
        self.read += bytes.len() as u64;
        let skipped = self.skip.min(bytes.len());
        self.skip -= skipped;
        bytes = &bytes[skipped..];
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let step = usize::try_from(self.payload_left).unwrap_or(usize::MAX).min(bytes.len());
                self.payload_left -= step as u64;
                bytes = &bytes[step..];
                continue;
            }
            let step = (FRAME_HEADER - self.have).min(bytes.len());
            self.header[self.have..self.have + step].copy_from_slice(&bytes[..step]);
            self.have += step;
            bytes = &bytes[step..];
            if self.have == FRAME_HEADER {
                self.have = 0;
                let length = u64::from(u32::from_be_bytes([0, self.header[0], self.header[1], self.header[2]]));
                if matches!(self.header[3], DATA | HEADERS | CONTINUATION) {
                    self.carried += length;
                }
                self.payload_left = length;
            }
        }
        self.flooded()
    }

    /// Notes bytes written to the client.
    pub fn wrote(&mut self, n: usize) {
        self.written += n as u64;
    }

    fn flooded(&self) -> bool {
        self.read / RATIO > self.carried + self.written / WRITE_SHARE + ALLOWANCE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: usize) -> Vec<u8> {
        let len = (payload as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, 0, 0, 0, 0, 1];
        f.resize(FRAME_HEADER + payload, 0);
        f
    }

    #[test]
    fn control_frames_alone_are_a_flood_past_the_allowance() {
        let mut watch = FloodWatch::new(6);
        assert!(!watch.read(b"SM\r\n\r\n"));
        let window_update = frame(0x8, 4);
        let mut flooded_after = None;
        for i in 0..2_000_000 {
            if watch.read(&window_update) {
                flooded_after = Some(i);
                break;
            }
        }
        // 8 MiB of 13-byte frames.
        let frames = flooded_after.expect("a flood");
        assert!((600_000..700_000).contains(&frames), "{frames}");
    }

    #[test]
    fn requests_carry_their_frames_however_reads_split_them() {
        let mut watch = FloodWatch::new(0);
        let mut bytes = Vec::new();
        for _ in 0..100_000 {
            bytes.extend(frame(HEADERS, 40));
            bytes.extend(frame(DATA, 200));
            bytes.extend(frame(0x8, 4));
            bytes.extend(frame(0x2, 5));
        }
        for chunk in bytes.chunks(7) {
            assert!(!watch.read(chunk));
        }
        assert_eq!(watch.carried, 100_000 * 240);
    }

    #[test]
    fn window_updates_for_what_was_written_are_no_flood() {
        let mut watch = FloodWatch::new(0);
        let update = frame(0x8, 4);
        // A 64 GiB download, a WINDOW_UPDATE for each 16 KiB DATA frame.
        for _ in 0..4_000_000 {
            watch.wrote(16 * 1024 + FRAME_HEADER);
            assert!(!watch.read(&update));
        }
        // A PING flood is answered byte for byte, and trips all the same.
        let mut watch = FloodWatch::new(0);
        let ping = frame(0x6, 8);
        let tripped = (0..10_000_000).any(|_| {
            watch.wrote(ping.len());
            watch.read(&ping)
        });
        assert!(tripped);
    }
}
