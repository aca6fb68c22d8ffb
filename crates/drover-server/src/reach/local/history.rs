//! A session's recent payloads. The latest is kept as it came; each older one is kept LZ4-compressed
//! against the payload that followed it, which shares most of its text (the same keys, mostly the same
//! values), so a full history costs a fraction of its text. Every attached node holds several sessions,
//! so this is per-node memory at fleet size (docs/benchmarks.md, "Server memory per idle agent").

use chrono::{DateTime, Utc};

/// A payload as the agent sent it: JSON text, checked on arrival, parsed only when someone looks (a
/// parsed `Value` costs several times its text).
#[derive(Clone)]
pub(super) struct Payload {
    pub at: DateTime<Utc>,
    pub seq: u64,
    pub json: Box<str>,
}

/// An older payload as kept: compressed with the next newer payload's text as the dictionary.
struct Packed<'a> {
    at: DateTime<Utc>,
    seq: u64,
    /// Its length as text: the bound on history bytes counts text, whatever it compresses to.
    len: u32,
    data: &'a [u8],
}

/// A packed payload's header: seconds, nanoseconds, seq, text length, packed length.
const HEADER: usize = 8 + 4 + 8 + 4 + 4;

impl Packed<'_> {
    fn size(&self) -> usize {
        HEADER + self.data.len()
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.at.timestamp().to_le_bytes());
        out.extend_from_slice(&self.at.timestamp_subsec_nanos().to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        // Packed data is never longer than its text, and text lengths are u32.
        let packed = u32::try_from(self.data.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&packed.to_le_bytes());
        out.extend_from_slice(self.data);
    }

    /// The first packed payload in `buf`, or None at its end (or at bytes this module did not write).
    fn read(buf: &[u8]) -> Option<Packed<'_>> {
        let secs = i64::from_le_bytes(buf.get(0..8)?.try_into().ok()?);
        let nanos = u32::from_le_bytes(buf.get(8..12)?.try_into().ok()?);
        let seq = u64::from_le_bytes(buf.get(12..20)?.try_into().ok()?);
        let len = u32::from_le_bytes(buf.get(20..24)?.try_into().ok()?);
        let packed = u32::from_le_bytes(buf.get(24..HEADER)?.try_into().ok()?) as usize;
        Some(Packed {
            at: DateTime::from_timestamp(secs, nanos)?,
            seq,
            len,
            data: buf.get(HEADER..HEADER.checked_add(packed)?)?,
        })
    }
}

#[derive(Default)]
pub(super) struct History {
    latest: Option<Payload>,
    /// The older payloads, oldest first, one after another in one allocation sized to fit. A queue of
    /// boxed payloads cost some 250 bytes more per session (a slot for each payload kept, an allocation
    /// each), and every node holds several sessions.
    older: Vec<u8>,
    /// Text bytes of every payload kept.
    bytes: usize,
}

impl History {
    pub fn latest(&self) -> Option<&Payload> {
        self.latest.as_ref()
    }

    /// The older payloads, oldest first.
    fn packed(&self) -> impl Iterator<Item = Packed<'_>> {
        let mut rest = &self.older[..];
        std::iter::from_fn(move || {
            let p = Packed::read(rest)?;
            rest = rest.get(p.size()..).unwrap_or_default();
            Some(p)
        })
    }

    /// Adds the newest payload; the oldest go while more than `max` payloads or `max_bytes` of text are
    /// kept. The latest always stays.
    pub fn push(&mut self, payload: Payload, max: usize, max_bytes: usize) {
        self.bytes = self.bytes.saturating_add(payload.json.len());
        let Some(prev) = self.latest.replace(payload) else {
            return;
        };
        let dict = self.latest.as_ref().map_or(&[][..], |p| p.json.as_bytes());
        let data = lz4_flex::block::compress_with_dict(prev.json.as_bytes(), dict);
        let added = Packed {
            at: prev.at,
            seq: prev.seq,
            len: u32::try_from(prev.json.len()).unwrap_or(u32::MAX),
            data: &data,
        };
        // The oldest go first, the one just packed last, while the bounds are passed.
        let kept: Vec<Packed<'_>> = self.packed().chain([added]).collect();
        let (mut first, mut bytes) = (0, self.bytes);
        while first < kept.len() && (kept.len() - first + 1 > max || bytes > max_bytes) {
            bytes = bytes.saturating_sub(kept[first].len as usize);
            first += 1;
        }
        let kept = &kept[first..];
        let mut older = Vec::with_capacity(kept.iter().map(Packed::size).sum());
        for p in kept {
            p.write(&mut older);
        }
        self.older = older;
        self.bytes = bytes;
    }

    /// Every payload kept, oldest first, as text. Each older one is unpacked with the text after it; one
    /// that cannot be (never expected: the server packed it) ends the list there, newest ones kept.
    pub fn samples(&self) -> Vec<Payload> {
        let Some(latest) = &self.latest else {
            return Vec::new();
        };
        let packed: Vec<Packed<'_>> = self.packed().collect();
        let mut out = Vec::with_capacity(packed.len() + 1);
        out.push(latest.clone());
        for packed in packed.iter().rev() {
            let dict = out.last().map_or(&[][..], |p: &Payload| p.json.as_bytes());
            let text =
                lz4_flex::block::decompress_with_dict(packed.data, packed.len as usize, dict)
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
        self.packed().map(|p| p.data.len()).sum()
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
        assert_eq!(
            h.older.capacity(),
            h.older.len(),
            "room for the kept payloads only"
        );
        for (g, s) in got.iter().zip(&sent[15..]) {
            assert_eq!((g.at, g.seq, &g.json), (s.at, s.seq, &s.json));
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
