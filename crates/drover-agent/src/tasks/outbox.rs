//! A task's output on disk until the server acknowledges it: frames appended to `out`, the end in
//! `exit.json`. Bounded per task; what a broken link kept from the server is resent from here.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Output kept per task; past it, output is dropped and a note says so.
pub const MAX_TASK_OUTPUT: u64 = 64 * 1024 * 1024;

/// The end of a task, as stored and sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// Number of output chunks before the exit.
    pub seq: u64,
    pub state: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub error: String,
}

/// One output chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub seq: u64,
    /// 1 stdout, 2 stderr
    pub stream: u8,
    pub data: Vec<u8>,
}

pub struct Outbox {
    dir: PathBuf,
    out: BufWriter<File>,
    written: u64,
    pub next_seq: u64,
    truncated: bool,
}

const HEADER: usize = 8 + 1 + 4;

impl Outbox {
    pub fn create(dir: &Path, spec_json: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        drover_files::replace(&dir.join("spec.json"), spec_json.as_bytes(), true)?;
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("out"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            out: BufWriter::with_capacity(256 * 1024, out),
            written: 0,
            next_seq: 0,
            truncated: false,
        })
    }

    /// Appends a chunk and returns it with its sequence number; `None` once the task's output is full.
    pub fn append(&mut self, stream: u8, data: Vec<u8>) -> std::io::Result<Option<Chunk>> {
        if self.truncated {
            return Ok(None);
        }
        let (stream, data) = if self.written + data.len() as u64 > MAX_TASK_OUTPUT {
            self.truncated = true;
            (
                2,
                format!("[drover: output truncated after {} bytes]\n", self.written).into_bytes(),
            )
        } else {
            (stream, data)
        };
        // Header and bytes go to the buffered file as they are: the chunk itself travels on uncopied.
        let mut header = [0u8; HEADER];
        header[0..8].copy_from_slice(&self.next_seq.to_le_bytes());
        header[8] = stream;
        header[9..13].copy_from_slice(&(data.len() as u32).to_le_bytes());
        self.out.write_all(&header)?;
        self.out.write_all(&data)?;
        self.written += data.len() as u64;
        let chunk = Chunk {
            seq: self.next_seq,
            stream,
            data,
        };
        self.next_seq += 1;
        Ok(Some(chunk))
    }

    /// Pushes buffered frames to the file (before they are sent, so a resend can find them).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// Records the end: after this, a crash of the agent process still reports it. Not waited to disk (three
    /// fsyncs would cost a fast task most of its round trip): a power loss before the server's acknowledgement
    /// turns the run Lost, never wrong.
    pub fn finish(&mut self, exit: &Exit) -> std::io::Result<()> {
        self.out.flush()?;
        let json = serde_json::to_vec(exit).map_err(std::io::Error::other)?;
        drover_files::replace(&self.dir.join("exit.json"), &json, true)
    }
}

/// Chunks with `seq >= from` from a task's directory (a torn last frame is ignored).
pub fn read_chunks(dir: &Path, from: u64) -> std::io::Result<Vec<Chunk>> {
    let file = match File::open(dir.join("out")) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(file);
    let mut chunks = Vec::new();
    let mut header = [0u8; HEADER];
    while reader.read_exact(&mut header).is_ok() {
        let seq = u64::from_le_bytes(header[0..8].try_into().unwrap_or_default());
        let stream = header[8];
        let len = u32::from_le_bytes(header[9..13].try_into().unwrap_or_default()) as usize;
        let mut data = vec![0u8; len];
        if reader.read_exact(&mut data).is_err() {
            break;
        }
        if seq >= from {
            chunks.push(Chunk { seq, stream, data });
        }
    }
    Ok(chunks)
}

pub fn read_exit(dir: &Path) -> Option<Exit> {
    let bytes = std::fs::read(dir.join("exit.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_survive_on_disk_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let task = dir.path().join("t1");
        let mut outbox = Outbox::create(&task, "{}").unwrap();
        for i in 0..5u8 {
            outbox.append(1 + i % 2, vec![b'a' + i, b'\n']).unwrap();
        }
        let exit = Exit {
            seq: 5,
            state: "Succeeded".into(),
            exit_code: Some(0),
            signal: None,
            error: String::new(),
        };
        outbox.finish(&exit).unwrap();
        let chunks = read_chunks(&task, 3).unwrap();
        assert_eq!(chunks.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(chunks[0].data, b"d\n");
        assert_eq!(chunks[0].stream, 2);
        assert_eq!(read_exit(&task), Some(exit));
        // A torn frame at the end (a crash mid-write) is ignored.
        let mut f = OpenOptions::new()
            .append(true)
            .open(task.join("out"))
            .unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        assert_eq!(read_chunks(&task, 0).unwrap().len(), 5);
    }
}
