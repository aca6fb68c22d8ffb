//! A session's recent payloads. The latest is kept as it came; each older one is kept LZ4-compressed
//! against the payload that followed it, which shares most of its text (the same keys, mostly the same
//! values), so a full history costs a fraction of its text. Every attached node holds several sessions,
//! so this is per-node memory at fleet size (docs/benchmarks.md, "Server memory per idle agent").

use std::collections::VecDeque;

use chrono::{DateTime, Utc};

/// A payload as the agent sent it: JSON text, checked on arrival, parsed only when someone looks (a
/// parsed `Value` costs several times its text).
#[derive(Clone)]
pub(super) struct Payload {
    pub at: DateTime<Utc>,
    pub seq: u64,
    pub json: Box<str>,
}

/// An older payload, compressed with the next newer payload's text as the dictionary.
struct Packed {
    at: DateTime<Utc>,
    seq: u64,
    /// Its length as text: the bound on history bytes counts text, whatever it compresses to. A u32:
    /// payloads are bounded far below 4 GiB on arrival, and every session of every node has several.
    len: u32,
    data: Box<[u8]>,
}

#[derive(Default)]
pub(super) struct History {
    latest: Option<Payload>,
    /// Oldest first.
    older: VecDeque<Packed>,
    /// Text bytes of every payload kept.
    bytes: usize,
}

impl History {
    pub fn len(&self) -> usize {
        self.older.len() + usize::from(self.latest.is_some())
    }

    pub fn latest(&self) -> Option<&Payload> {
        self.latest.as_ref()
    }

    /// Adds the newest payload; the oldest go while more than `max` payloads or `max_bytes` of text are
    /// kept. The latest always stays.
    pub fn push(&mut self, payload: Payload, max: usize, max_bytes: usize) {
        let added = payload.json.len();
        if let Some(prev) = self.latest.replace(payload) {
            let dict = self.latest.as_ref().map_or(&[][..], |p| p.json.as_bytes());
            if self.older.capacity() == 0 {
                // Room for the older payloads kept plus the one added before the oldest goes: growing
                // by doubling left 16 slots for 9.
                self.older.reserve_exact(max);
            }
            self.older.push_back(Packed {
                at: prev.at,
                seq: prev.seq,
                len: u32::try_from(prev.json.len()).unwrap_or(u32::MAX),
                data: lz4_flex::block::compress_with_dict(prev.json.as_bytes(), dict).into(),
            });
        }
        self.bytes = self.bytes.saturating_add(added);
        while self.len() > 1 && (self.len() > max || self.bytes > max_bytes) {
            match self.older.pop_front() {
                Some(old) => self.bytes = self.bytes.saturating_sub(old.len as usize),
                None => break,
            }
        }
    }

    /// Every payload kept, oldest first, as text. Each older one is unpacked with the text after it; one
    /// that cannot be (never expected: the server packed it) ends the list there, newest ones kept.
    pub fn samples(&self) -> Vec<Payload> {
        let Some(latest) = &self.latest else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(self.len());
        out.push(latest.clone());
        for packed in self.older.iter().rev() {
            let dict = out.last().map_or(&[][..], |p: &Payload| p.json.as_bytes());
            let text =
                lz4_flex::block::decompress_with_dict(&packed.data, packed.len as usize, dict)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok());
            let Some(text) = text else {
                tracing::warn!(
                    seq = packed.seq,
                    "a session payload kept in memory could not be unpacked"
                );
                break;
            };
            out.push(Payload {
                at: packed.at,
                seq: packed.seq,
                json: text.into(),
            });
        }
        out.reverse();
        out
    }

    /// Bytes held for the older payloads (packed), for tests and measurements.
    #[cfg(test)]
    fn packed_bytes(&self) -> usize {
        self.older.iter().map(|p| p.data.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(seq: u64) -> Payload {
        // Shaped like an agent's metrics payload: the same keys every time, values that drift.
        let json = format!(
            r#"{{"cpu_usage":{:.2},"mem_used_mb":{},"mem_total_mb":64000,"load":[{:.2},0.5,0.4],"disks":[{{"mount":"/","used_gb":{},"total_gb":500}}],"uptime_s":{}}}"#,
            (seq % 97) as f64 * 1.3,
            20_000 + seq * 7,
            (seq % 13) as f64 / 10.0,
            120 + seq / 10,
            1_000_000 + seq * 10
        );
        Payload {
            at: Utc::now(),
            seq,
            json: json.into(),
        }
    }

    #[test]
    fn every_kept_payload_reads_back_as_it_came_oldest_first() {
        let mut h = History::default();
        let sent: Vec<_> = (0..25).map(payload).collect();
        for p in &sent {
            h.push(p.clone(), 10, usize::MAX);
        }
        let got = h.samples();
        assert_eq!(got.len(), 10);
        assert_eq!(h.older.capacity(), 10, "room for the kept payloads only");
        for (g, s) in got.iter().zip(&sent[15..]) {
            assert_eq!((g.seq, &g.json), (s.seq, &s.json));
        }
        assert_eq!(h.latest().map(|p| p.seq), Some(24));
        let text: usize = sent[15..24].iter().map(|p| p.json.len()).sum();
        assert!(
            h.packed_bytes() < text / 2,
            "older payloads are kept packed: {} bytes for {text} of text",
            h.packed_bytes()
        );
    }

    #[test]
    fn the_byte_bound_counts_text_and_keeps_the_latest() {
        let mut h = History::default();
        let big = |seq| Payload {
            at: Utc::now(),
            seq,
            json: "x".repeat(1000).into(),
        };
        for seq in 0..10 {
            h.push(big(seq), 10, 2500);
        }
        let seqs: Vec<_> = h.samples().iter().map(|p| p.seq).collect();
        assert_eq!(seqs, [8, 9]);
        h.push(
            Payload {
                json: "y".repeat(5000).into(),
                ..big(10)
            },
            10,
            2500,
        );
        let seqs: Vec<_> = h.samples().iter().map(|p| p.seq).collect();
        assert_eq!(seqs, [10], "the latest stays even past the bound");
        assert!(History::default().samples().is_empty());
    }
}
